"""SQL analysis and rewriting with sqlglot, verified by PostgreSQL's own parser (pglast); pure functions."""
