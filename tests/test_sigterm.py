"""SIGTERM and Ctrl-C end every command within about a second, even inside a native call that
Python cannot interrupt (an ONNX Runtime run of seconds), with exit 130, one line, and every row
committed before kept."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import CLI_ENV, ROOT, latbench_exe
from latbench import ops as O
from latbench.store import LatencyTable

SMALL = [O.conv((1, 8, 8, 8), 8, 3), O.activation((1, 8, 8, 8), "relu")]
HUGE = O.conv((1, 512, 192, 192), 512, 7)  # 947 GFLOPs: one run takes ~20 s on one thread
NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}
NATIVE_LINE = ("latbench: error: interrupted by {}: still busy 1 s later (in a native call Python "
               "cannot interrupt), so ended there; everything committed before is kept")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sigint_by_default() -> None:
    """Popen preexec_fn: Ctrl-C at its default, as in a terminal. A pytest started as a background
    job (`cmd &` without job control) ignores SIGINT, its children inherit that, and latbench keeps
    a signal its starter ignored ignored (cli._InterruptWatch)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def end_with(proc: subprocess.Popen, signum: int) -> tuple[int, float, str]:
    """Send `signum`; the exit code, the seconds until the process ended, and its stderr."""
    t0 = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, time.monotonic() - t0, err


@pytest.fixture(scope="module")
def small_table(tmp_path_factory, every_command_helper) -> tuple[Path, dict[str, float], float]:
    """A table of two small ops profiled with ort (closed cleanly), its estimates, and the CPU
    seconds that run took (start-up included; the helper started beside it is not waited for, so
    RUSAGE_CHILDREN leaves it out)."""
    pytest.importorskip("onnxruntime")
    d = tmp_path_factory.mktemp("sig")
    ops = d / "small.txt"
    ops.write_text("\n".join(op.key for op in SMALL) + "\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([latbench_exe(), "profile", "--device", "ort", "--ops", str(ops), "--out",
                        str(d / "t.sqlite"), "--max-time", "0.05", "--rounds", "1"], capture_output=True, text=True,
                       cwd=ROOT, env=CLI_ENV, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert r.returncode == 0, r.stderr
    with LatencyTable.open(d / "t.sqlite", readonly=True) as t:
        est = t.estimates()
    assert sorted(est) == sorted(op.key for op in SMALL)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return d / "t.sqlite", est, cpu


# Ctrl-C takes the same watchdog path (its line names it): test_any_command_obeys_... sends both
@pytest.mark.parametrize("signum", [signal.SIGTERM], ids=["SIGTERM"])
def test_profile_inside_a_long_native_run_ends_within_a_second(tmp_path: Path, small_table, signum):
    src, est, startup_cpu = small_table
    table = tmp_path / "t.sqlite"
    shutil.copy(src, table)
    ops = tmp_path / "ops.txt"
    ops.write_text("\n".join(op.key for op in [*SMALL, HUGE]) + "\n")
    proc = subprocess.Popen([latbench_exe(), "profile", "--device", "ort", "--ops", str(ops), "--out",
                             str(table), "--max-time", "600", "--min-samples", "3", "--rounds", "1",
                             "--interleave", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env=CLI_ENV, preexec_fn=sigint_by_default)
    try:  # the two small ops are stored already: past a whole small run's CPU, it is in HUGE's runs
        deadline = time.monotonic() + 240
        while cpu_seconds(proc.pid) < startup_cpu + 1 and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        code, seconds, err = end_with(proc, signum)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130
    assert seconds < 2.0, (seconds, err)
    assert err.strip().splitlines()[-1] == NATIVE_LINE.format(NAMES[signum])
    with LatencyTable.open(table, readonly=True) as t:  # the killed writer's log is read as it is
        assert t.integrity_check() == "ok"
        assert t.estimates() == est and HUGE.key not in t


SCRIPT = """
import sys, time
import numpy as np
import latbench.enumerate
from latbench.cli import run

def busy(*a, **k):
    a = np.ones((5000, 5000))
    print("busy", flush=True)
    if {native}:
        while True:
            a @ a  # one BLAS call of ~10 s: no Python bytecode runs inside it
    time.sleep(60)

latbench.enumerate.enumerate_ops = busy
sys.exit(run(["enumerate", "tiny"]))
"""


CASES = {"native-call": (True, signal.SIGTERM), "native-call-ctrl-c": (True, signal.SIGINT),
         "python": (False, signal.SIGTERM)}


@pytest.fixture(scope="module")
def signalled() -> dict[str, tuple[int, float, str]]:
    """SCRIPT run once per case of CASES, the processes side by side (each waits on its own busy
    call, so their starts overlap instead of adding up), each sent its signal 0.5 s after it said
    busy: case -> (exit code, seconds from its signal until it was seen ended, stderr)."""
    env = {**CLI_ENV, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {case: subprocess.Popen([sys.executable, "-c", SCRIPT.format(native=native)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                                    preexec_fn=sigint_by_default)
             for case, (native, _) in CASES.items()}
    out = {}
    try:
        for case, proc in procs.items():
            line = proc.stdout.readline()
            out[case] = (None, 0.0, f"said {line!r}, not busy") if line != "busy\n" else None
        time.sleep(0.5)
        sent = {}
        for case, proc in procs.items():
            if out[case] is None:
                sent[case] = time.monotonic()
                proc.send_signal(CASES[case][1])
        for case, t0 in sent.items():
            _, err = procs[case].communicate(timeout=60)
            out[case] = (procs[case].returncode, time.monotonic() - t0, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


@pytest.mark.parametrize("case", CASES)
def test_any_command_obeys_sigterm_within_a_second(signalled, case: str):
    """`enumerate` (not only profile): inside a BLAS call the watchdog ends it, for SIGTERM and
    Ctrl-C alike; in Python code (a sleep) the KeyboardInterrupt does, through the usual one-line error."""
    native, signum = CASES[case]
    code, seconds, err = signalled[case]
    assert code == 130 and seconds < 2.0, (code, seconds, err)
    expected = NATIVE_LINE.format(NAMES[signum]) if native else f"latbench: error: interrupted by {NAMES[signum]}"
    assert err.strip().splitlines() == [expected]


# ---------------------------------------------------------------------- every command, one process
# A command line per command that gets past option parsing into the command's own code (the files
# need not exist: SIGTERM arrives at the command's first call into the library).
COMMAND_ARGS = {
    "spaces": [], "enumerate": ["tiny"], "quickstart": ["--workdir", "qs"],
    "profile": ["--device", "ort", "--space", "tiny", "--out", "t.sqlite"], "devices": [],
    "ops": ["--model", "m.onnx", "--device", "ort"],
    "predict": ["--table", "t.sqlite", "--random", "2"],
    "calibrate": ["--table", "t.sqlite", "--space", "tiny"], "validate": ["--table", "t.sqlite", "--space", "tiny"],
    "search": ["--space", "tiny", "--table", "t.sqlite"],
    "fit": ["--space", "tiny", "--measured", "empty.csv", "-o", "f.sqlite"],
    "transfer": ["t.sqlite", "--space", "tiny", "--measured", "empty.csv", "-o", "f.sqlite"],
    "table show": ["t.sqlite"], "table check": ["t.sqlite"],
    "table export": ["t.sqlite", "--format", "csv", "--out", "x.csv"],
    "table import": ["empty.csv", "--out", "t2.sqlite"], "table merge": ["t.sqlite", "empty.sqlite"],
    "table combine": ["t3.sqlite", "empty.sqlite"],
    "accuracy train": ["--space", "tiny", "--data", "d.csv", "--out", "a.json"],
    "supernet train": ["--space", "tiny", "--out", "s.pt"],
    "supernet search": ["--checkpoint", "s.pt", "--table", "t.sqlite", "--budget-ms", "1"],
    "supernet export": ["--checkpoint", "s.pt", "--config", "c.json", "-o", "x.onnx"],
    "supernet eval": ["--checkpoint", "s.pt"],
    "farm node": ["--address", "127.0.0.1:1", "--device", "ort"], "farm devices": ["--address", "127.0.0.1:1"],
    "farm profile": ["--address", "127.0.0.1:1", "--out-dir", "f", "--space", "tiny"],
}
# imported by the helper before it times anything: the commands import them inside themselves
PRELOAD = ["latbench.store", "latbench.spaces", "latbench.enumerate", "latbench.profiling", "latbench.predict",
           "latbench.search", "latbench.validate", "latbench.formats", "device_agents", "torch",
           "latbench.supernet.train", "latbench.supernet.evaluator", "latbench.supernet.export"]


def leaf_commands() -> list[str]:
    """Every runnable command of the real app, as "group command" paths."""
    import typer.main

    from latbench.cli import app

    def walk(cmd, path: list[str]):
        subs = getattr(cmd, "commands", None)
        if not subs:
            return [" ".join(path)]
        return [leaf for name, sub in subs.items() for leaf in walk(sub, [*path, name])]

    return walk(typer.main.get_command(app), [])


def test_the_interrupt_test_covers_every_command():
    assert sorted(leaf_commands()) == sorted(COMMAND_ARGS)


@pytest.fixture(scope="module")
def every_command_helper(tmp_path_factory) -> Iterator[subprocess.Popen]:
    """tests/interrupt_each_command.py started on every command of COMMAND_ARGS (SIGTERM at each
    one's first library call) and not waited for: `small_table` starts it first, so its imports run
    beside that fixture's profile run instead of after it; `interrupted` reads what it said."""
    cwd = tmp_path_factory.mktemp("each")
    for name in ("empty.csv", "empty.sqlite"):
        (cwd / name).write_text("")
    commands = cwd / "commands.jsonl"
    commands.write_text("".join(json.dumps([*cmd.split(), *args]) + "\n" for cmd, args in COMMAND_ARGS.items()))
    env = {**CLI_ENV, "ADBUTILS_ADB_PATH": "/bin/true", "ANDROID_ADB_SERVER_PORT": "9"}  # never a real adb
    with commands.open() as stdin:
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "interrupt_each_command.py"), *PRELOAD],
                                stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def interrupted(every_command_helper) -> dict[str, tuple[int, list[str], str]]:
    """What the helper said: command -> (exit code, [function hit], stderr)."""
    stdout, stderr = every_command_helper.communicate(timeout=300)
    out = {}
    for line in stdout.splitlines():
        argv, code, hit, err = json.loads(line)
        out[" ".join(argv[:2] if argv[0] in ("table", "accuracy", "supernet", "farm") else argv[:1])] = (code, hit, err)
    out["<helper>"] = (every_command_helper.returncode, [], stderr[-3000:])
    return out


@pytest.mark.parametrize("command", sorted(COMMAND_ARGS))
def test_sigterm_inside_every_command_is_exit_130_and_one_line(interrupted, command):
    """SIGTERM inside any command's own code becomes the one line and exit 130 (the handler in
    cli/app.py), whatever the command does around its library calls."""
    if command.startswith("supernet"):
        pytest.importorskip("torch")  # else the command stops at the missing extra, before any call
    assert command in interrupted, interrupted["<helper>"]  # else the helper died before it
    code, hit, err = interrupted[command]
    assert hit, f"{command} made no library call, so the signal was never sent: {err}"
    assert code == 130, (hit, err)
    assert err.strip().splitlines()[-1] == "latbench: error: interrupted by SIGTERM", (hit, err)
    assert "Traceback" not in err
