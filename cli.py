#!/usr/bin/env python
"""`python cli.py ...` runs the same typer app as the `latbench` console script (no install needed)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from latbench.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
