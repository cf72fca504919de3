"""The config: its validated snapshot, environment overrides and logging set up from it (no network libraries)."""
