"""Backend connections and their pools: connecting, relaying, prepared statement names per backend."""
