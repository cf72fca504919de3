"""`python -m proxy` runs the pgwarden command line."""

from proxy.app.cli import main

raise SystemExit(main())
