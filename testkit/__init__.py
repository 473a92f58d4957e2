"""Test kit: local stand-ins for Apple and Google push services, and harnesses for the real servers."""
