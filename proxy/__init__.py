"""pgwarden data plane and process: wire protocol, sessions, pools, routing, CLI."""
