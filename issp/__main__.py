"""``python -m issp``: see ``issp.cli``."""

from issp.cli import main

raise SystemExit(main())
