"""The result cache: which reads are eligible, answers kept by version in memory and Redis, invalidation."""
