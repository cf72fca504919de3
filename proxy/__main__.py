"""`python -m proxy` runs the pgwarden command line."""
from proxy.cli import main

raise SystemExit(main())
