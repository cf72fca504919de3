"""Writes that bypass pgwarden, caught from PostgreSQL's WAL by a logical replication consumer."""
