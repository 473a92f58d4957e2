"""Test kit: local stand-ins for Apple and Google push services, harnesses for real servers."""
