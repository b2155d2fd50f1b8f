"""`run_cli(cli, *args)`: the CLI run in-process (conftest's `cli` fixture) with the result shaped
as a finished subprocess (returncode, stdout, stderr), for tests where a subprocess is not the point."""
from __future__ import annotations

import subprocess


def run_cli(cli, *args: str) -> subprocess.CompletedProcess:
    code, out, err = cli(*args)
    return subprocess.CompletedProcess(list(args), code, out, err)
