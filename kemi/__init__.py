"""KEMI (app_python3) routing for Pushgate. Runs inside Kamailio only."""
