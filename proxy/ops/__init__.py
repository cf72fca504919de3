"""Operations: metrics, query statistics, the slow log, the HTTP endpoints, the admin console and the janitor."""
