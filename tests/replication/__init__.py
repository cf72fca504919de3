"""Tests against a throwaway primary with streaming replicas (tests/replication/cluster.py)."""
