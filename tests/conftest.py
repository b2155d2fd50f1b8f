"""Shared fixtures: the repo root, a runner for the real `latbench` / `python cli.py`, cached enumerations."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Fixed terminal width so rich output (help, tables) is the same in every run.
CLI_ENV = {**os.environ, "COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1", "PYTHONHASHSEED": "0"}
CLI_ENV.pop("LATBENCH_DEBUG", None)

TINY_YAML = """\
name: cli-tiny
input: {resolutions: [32, 48]}
stem: {type: conv, out: [8, 16], kernel: 3, stride: 2, act: relu}
stages:
  - {block: mbconv, depth: [1, 2], out: 16, kernel: [3, 5], expand: [2, 4], stride: 2, act: hswish, se: true}
head:
  - {type: pool}
  - {type: linear, out: 10}
"""


def latbench_exe() -> str:
    """The installed console script (next to this interpreter first)."""
    here = Path(sys.executable).with_name("latbench")
    exe = str(here) if here.exists() else shutil.which("latbench")
    if not exe:
        pytest.fail('the latbench console script is not installed: pip install -e ".[dev]"')
    return exe


def run_latbench(*args: str, entry: str = "script", **kw) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess: entry "script" = `latbench`, "root" = `python cli.py`."""
    cmd = [latbench_exe()] if entry == "script" else [sys.executable, str(ROOT / "cli.py")]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=ROOT, env=CLI_ENV,
                          timeout=120, **kw)


@functools.lru_cache(maxsize=None)
def enumerated(space: str, granularity: str = "op", resolutions: tuple = ()) -> tuple:
    """enumerate_ops of a registered space, computed once per session."""
    from latbench.enumerate import enumerate_ops
    from latbench.spaces import get_space

    return tuple(enumerate_ops(get_space(space), resolutions or None, granularity))


@pytest.fixture
def tiny_yaml(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY_YAML)
    return p


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process through `latbench.cli.run`: returns (exit code, stdout, stderr)."""
    from latbench.cli import run

    def invoke(*args: str):
        capsys.readouterr()
        code = run(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
