"""``python -m issp``: see ``issp.cli``."""

from issp.cli import main_entry

main_entry()
