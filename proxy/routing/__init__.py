"""Read routing to replicas: which statements may run there, where the primary is, and how far each replica has replayed."""
