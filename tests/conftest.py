"""Shared fixtures: the repo root, a runner for the real `latbench` / `python cli.py`, cached enumerations,
and the stand-in adb server (tests/adb_standin) with the Android agent built on it."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import pytest

if TYPE_CHECKING:  # adb_standin needs flatbuffers: imported where a stand-in is used
    from adb_standin import FakeDevice, StandinServer
    from device_agents.android import AndroidAgent

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


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for a module (use: `pytestmark = pytest.mark.usefixtures(...)`):
    small nets run no faster on more, and on a busy 2-core machine several times slower."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


# ---------------------------------------------------------------------- the stand-in adb server
def standin_serial(profile: str) -> str:
    """The serial of a bundled stand-in device profile ("pixel7", "galaxy_s21_sd888")."""
    from adb_standin import load_profile

    return load_profile(profile)["serial"]


def start_standin(devices: Iterable[FakeDevice]) -> StandinServer:
    """Start a stand-in adb server or skip the test with the reason the stand-in cannot run here."""
    from adb_standin import StandinServer, StandinUnavailable

    srv = StandinServer(list(devices))
    try:
        return srv.start()
    except StandinUnavailable as e:
        pytest.skip(f"stand-in adb server unavailable here: {e}")


@pytest.fixture(scope="module")
def no_real_adb_server() -> Iterator[None]:
    """adbutils must never start a real adb server: point it at a harmless binary."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADBUTILS_ADB_PATH", "/bin/true")
        yield


@pytest.fixture(scope="module")
def server(no_real_adb_server: None) -> Iterator[StandinServer]:
    """One stand-in adb server for the module with a Pixel 7-like and a Snapdragon 888-like (Galaxy
    S21) device; while it runs, ANDROID_ADB_SERVER_PORT points at it (never at a real adb)."""
    pytest.importorskip("ai_edge_litert",
                        reason="the stand-in benchmark_model runs LiteRT: pip install 'latbench[tflite]'")
    from adb_standin import FakeDevice

    srv = start_standin([FakeDevice("pixel7"), FakeDevice("galaxy_s21_sd888")])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANDROID_ADB_SERVER_PORT", str(srv.port))
        mp.delenv("ANDROID_ADB_SERVER_HOST", raising=False)
        yield srv
    srv.stop()


@pytest.fixture
def pixel(server: StandinServer) -> FakeDevice:
    """The Pixel stand-in with healthy knobs and fresh counters."""
    dev = server.device(standin_serial("pixel7"))
    dev.reset_knobs()
    dev.reset_counters()
    return dev


def android_on_standin(server: StandinServer, **kw: Any) -> AndroidAgent:
    """An android agent on `server` (the `server` fixture): the Pixel, the stand-in benchmark_model
    and a 0.1 s cooldown unless `kw` says otherwise. The caller closes it."""
    from adb_standin import BENCHMARK_MODEL
    from device_agents import get_agent

    kw.setdefault("serial", standin_serial("pixel7"))
    kw.setdefault("runner", str(BENCHMARK_MODEL))
    kw.setdefault("cooldown", 0.1)
    kw.setdefault("adb_port", server.port)
    return get_agent("android", **kw)
