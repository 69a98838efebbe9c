"""``python -m swarmbus`` runs the CLI (the predecessor had no ``__main__``)."""

from swarmbus.cli.main import main

raise SystemExit(main())
