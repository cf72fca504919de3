"""Tests of the audit trail, the compliance report and the slow-query log (real files, Redis, PostgreSQL)."""
