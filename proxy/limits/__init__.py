"""Rate limits and quotas per tenant, role or user: GCRA, the limits that apply, the process's counters and Redis."""
