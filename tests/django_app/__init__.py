"""A minimal Django app that the client tests drive through pgwarden (see scenario.py)."""
