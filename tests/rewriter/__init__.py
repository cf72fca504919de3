"""Tests of the rewriter package (pure functions; PostgreSQL only to run what it produces)."""
