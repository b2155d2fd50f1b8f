"""The `latbench` command line: one module per command group (enumerate, quickstart, profile,
devices, predict, validate, search, table, supernet); `app` turns errors into one line and an exit
code, and handles SIGINT/SIGTERM once for every command."""
from .app import EXIT_INTERRUPTED, app, main, run

__all__ = ["EXIT_INTERRUPTED", "app", "main", "run"]
