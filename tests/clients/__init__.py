"""End-to-end suites: real clients (psql, pgbench, psycopg, asyncpg, SQLAlchemy, Django, node-postgres) via pgwarden."""
