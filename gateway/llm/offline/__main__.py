"""`python -m gateway.llm.offline`: see `cli.main`."""

from gateway.llm.offline.cli import main

raise SystemExit(main())
