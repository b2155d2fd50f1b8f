"""The `latbench` command line (typer + rich): data to stdout, progress and logs to stderr.

Only this module turns library errors into one `latbench: error: ...` line and an exit code:
0 ok, 1 error, 2 usage, 3 partial result, 4 device unavailable, 130 interrupted. Heavy modules
(numpy, the spaces, torch) are imported inside the commands so `latbench --help` stays fast.
"""
from __future__ import annotations

import contextlib
import enum
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import LatbenchError, UsageError

try:  # typer >= 0.20 vendors click and raises its own exception types
    _CLI_ERRORS: tuple = (typer.TyperException,)
except AttributeError:  # pragma: no cover - older typer on top of click
    import click

    _CLI_ERRORS = (click.ClickException,)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_DEVICE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

app = typer.Typer(
    name="latbench",
    help="Latency lookup tables for hardware-aware NAS: enumerate a search space's ops, "
    "write them for a profiler, read them back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


class Granularity(str, enum.Enum):
    op = "op"
    block = "block"


class OutFormat(str, enum.Enum):
    paddleslim = "paddleslim"
    csv = "csv"
    jsonl = "jsonl"
    keys = "keys"


# ---------------------------------------------------------------------- helpers
def format_size(size: int) -> str:
    """Subnet count as text: exact when small, scientific notation when huge."""
    return f"{size:,}" if size < 10**6 else f"{float(size):.2e}"


def format_resolutions(res) -> str:
    """`128..224 step 4 (25)` for an even range, else the values themselves."""
    res = list(res)
    if not res:
        return "-"
    steps = {b - a for a, b in zip(res, res[1:])}
    if len(res) > 3 and len(steps) == 1:
        return f"{res[0]}..{res[-1]} step {steps.pop()} ({len(res)})"
    return ", ".join(str(r) for r in res)


def _write_ops(ops, fmt: str, out) -> None:
    """Write `ops` to the open text stream `out` in `fmt` (paddleslim|csv|jsonl|keys|json)."""
    from .formats import oplist, paddleslim

    writers: dict[str, Callable] = {
        "paddleslim": paddleslim.write_ops, "csv": oplist.write_csv, "jsonl": oplist.write_jsonl,
        "keys": oplist.write_keys, "json": oplist.write_json,
    }
    writers[fmt](ops, out)


def _emit(ops, fmt: str, output: Optional[Path]) -> None:
    """Render all ops first (so an op the format cannot express leaves no half-written file),
    then write them to `output` or stdout."""
    import io

    buf = io.StringIO()
    _write_ops(ops, fmt, buf)
    if output is None:
        try:
            sys.stdout.write(buf.getvalue())
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise LatbenchError(f"cannot write to stdout: {e.strerror or e}") from None
        return
    try:
        output.write_text(buf.getvalue(), encoding="utf-8")
    except OSError as e:
        raise LatbenchError(f"{output}: cannot write: {e.strerror or e}") from None


def _summary_line(name: str, granularity: str, resolutions, counts: dict[str, int], seconds: float) -> str:
    per_kind = ", ".join(f"{k} {v}" for k, v in counts.items()) or "no ops"
    total = sum(counts.values())
    return (f"{name} | granularity {granularity} | resolutions {format_resolutions(resolutions)} | "
            f"{per_kind} | total {total} | {seconds:.2f} s")


# ---------------------------------------------------------------------- spaces
@app.command("spaces")
def spaces_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (a list of spaces)."),
) -> None:
    """List the registered search spaces: positions, number of distinct subnets, resolutions."""
    from .spaces import get_space, list_spaces

    rows = [get_space(name).describe() for name in list_spaces()]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    table = Table(title="registered search spaces", title_justify="left")
    for col, just in (("name", "left"), ("positions", "right"), ("subnets", "right"),
                      ("resolutions", "left")):
        table.add_column(col, justify=just, no_wrap=True)
    for d in rows:
        table.add_row(d["name"], str(d["positions"]), format_size(int(d["size"])),
                      format_resolutions(d["resolutions"]))
    con = _stdout()
    con.print(table)
    for d in rows:
        if d.get("description"):
            con.print(f"[bold]{escape(d['name'])}[/bold]: {escape(d['description'])}")
    _stderr().print("a YAML file works wherever a space name does (schema: docs/spaces.md)")


# ---------------------------------------------------------------------- enumerate
@app.command("enumerate")
def enumerate_cmd(
    space: str = typer.Argument(..., metavar="SPACE_OR_YAML",
                                help="A registered space (see `latbench spaces`) or a YAML space file."),
    resolution: Optional[List[int]] = typer.Option(
        None, "--resolution", "-r", help="Input resolution; repeat for several (default: all of the space's)."),
    granularity: Granularity = typer.Option(
        Granularity.op, "--granularity", "-g", help="op: single operators; block: fused blocks."),
    fmt: Optional[OutFormat] = typer.Option(
        None, "--format", "-f",
        help="Output format (default: paddleslim at op granularity, keys at block granularity)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document: a list of op records."),
) -> None:
    """Write every unique op of a search space, for a profiler to measure once."""
    from .enumerate import enumerate_ops, summary
    from .spaces import get_space

    g = granularity.value
    if as_json and fmt is not None:
        raise UsageError("--json and --format exclude each other: pick one")
    out_fmt = "json" if as_json else (fmt.value if fmt else ("paddleslim" if g == "op" else "keys"))
    if out_fmt == "paddleslim" and g == "block":
        raise UsageError("blocks have no PaddleSlim line: use --granularity op, or --format csv|jsonl|keys")
    t0 = time.perf_counter()
    sp = get_space(space)
    res = sp.check_resolutions(resolution)
    ops = enumerate_ops(sp, res, g)
    _emit(ops, out_fmt, output)
    seconds = time.perf_counter() - t0
    line = _summary_line(sp.name or space, g, res, summary(ops), seconds)
    _stderr().print(line + (f" | wrote {output}" if output else ""), markup=False)


# ---------------------------------------------------------------------- quickstart
@dataclass
class QuickstartState:
    """What the quickstart steps share: the inputs and what earlier steps produced."""

    space_name: str
    resolutions: tuple[int, ...]
    samples: int
    seed: int
    space: Any = None
    ops: list = field(default_factory=list)
    blocks: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    workdir: Path = Path("latbench-quickstart")
    table: Optional[Path] = None  # the latency table the profile step built
    table_space: str = "tiny"  # the space that table covers
    table_resolution: int = 24


def _qs_space(st: QuickstartState, con: Console) -> None:
    from .spaces import get_space

    st.space = get_space(st.space_name)
    if st.resolutions:
        st.resolutions = st.space.check_resolutions(st.resolutions)
    else:  # a few default resolutions the space allows, else all of them
        allowed = st.space.resolutions
        st.resolutions = tuple(r for r in QUICKSTART_RESOLUTIONS if r in allowed) or tuple(allowed)
    d = st.space.describe()
    con.print(f"{d['name']}: {d.get('description', '')}", markup=False)
    con.print(f"{d['positions']} positions, {format_size(int(d['size']))} distinct subnets, "
              f"resolutions {format_resolutions(d['resolutions'])}; using {format_resolutions(st.resolutions)}")


def _kind_table(title: str, ops) -> Table:
    from .enumerate import summary

    t = Table(title=title, title_justify="left")
    t.add_column("kind")
    t.add_column("unique ops", justify="right")
    counts = summary(ops)
    for k, v in counts.items():
        t.add_row(k, str(v))
    t.add_row("[bold]total[/bold]", f"[bold]{sum(counts.values())}[/bold]")
    return t


def _qs_ops(st: QuickstartState, con: Console) -> None:
    from .enumerate import enumerate_ops

    t0 = time.perf_counter()
    st.ops = enumerate_ops(st.space, st.resolutions, "op")
    con.print(_kind_table(f"op granularity ({time.perf_counter() - t0:.2f} s)", st.ops))


def _qs_blocks(st: QuickstartState, con: Console) -> None:
    from .enumerate import enumerate_ops

    t0 = time.perf_counter()
    st.blocks = enumerate_ops(st.space, st.resolutions, "block")
    con.print(_kind_table(f"block granularity ({time.perf_counter() - t0:.2f} s)", st.blocks))


def _qs_sample(st: QuickstartState, con: Console) -> None:
    """Sample subnets: their FLOPs range, and a check that the enumeration covers every block."""
    import numpy as np

    sp = st.space
    rng = np.random.default_rng(st.seed)
    configs = sp.sample(rng, st.samples)
    if sp.resolution_position is not None:
        allowed = list(sp.positions[sp.resolution_position].choices)
        configs[:, sp.resolution_position] = rng.choice([allowed.index(r) for r in st.resolutions], st.samples)
    known = {b.key for b in st.blocks}
    flops_of: dict[str, int] = {}
    flops, missing = [], set()
    for cfg in configs:
        total = 0
        for b in sp.blocks(cfg):
            if b.key not in flops_of:
                flops_of[b.key] = b.flops
                if b.key not in known:
                    missing.add(b.key)
            total += flops_of[b.key]
        flops.append(total)
    mf = np.array(flops, dtype=np.float64) / 1e6
    con.print(f"{st.samples} subnets (seed {st.seed}): MFLOPs min {mf.min():.1f}, median "
              f"{np.median(mf):.1f}, max {mf.max():.1f}; {len(flops_of)} distinct blocks used")
    if missing:
        raise LatbenchError(f"{len(missing)} sampled block(s) missing from the enumeration, e.g. {min(missing)}")
    con.print("every block of every sampled subnet is in the enumerated list [green]ok[/green]")


def _first_of_each_kind(ops) -> list:
    seen: dict = {}
    for op in ops:
        seen.setdefault((op.kind, op.role), op)
    return list(seen.values())


def _qs_keys(st: QuickstartState, con: Console) -> None:
    from .formats.paddleslim import op_to_line

    con.print("one block of each kind (keys are Once-for-All LatencyTable keys for the OFA spaces):")
    for b in _first_of_each_kind(st.blocks):
        con.print(f"  {b.key}")
    con.print("one op of each kind: key, then its PaddleSlim line")
    for op in _first_of_each_kind(st.ops):
        con.print(f"  {op.key}\n    [dim]{op_to_line(op)}[/dim]")
    con.print(f"next: latbench enumerate {st.space_name} -r {st.resolutions[-1]} -o ops.txt  "
              f"(or --format csv|jsonl, --granularity block)")


QUICKSTART_RESOLUTIONS = (160, 192, 224)

def _qs_profile(st: QuickstartState, con: Console) -> None:
    """Profile the tiny space's blocks with ONNX Runtime on this CPU (1 thread) into a table."""
    from device_agents import get_agent

    from .cli_profile import checked_run, context_line, default_timing
    from .profiling import INVOCATION_META, measure_invocation, ops_with_resolutions, profile_into, timing_for
    from .spaces import get_space
    from .store import LatencyTable

    st.workdir.mkdir(parents=True, exist_ok=True)
    st.table = st.workdir / f"{st.table_space}-ort.sqlite"
    sp = get_space(st.table_space)
    ops, res = ops_with_resolutions(sp, [st.table_resolution], "block")
    agent = get_agent("ort", threads=1)
    try:
        timing = timing_for(agent, default_timing(agent, max_time_s=0.3), "auto", sp)
        with LatencyTable.open(str(st.table), agent.profile) as t:
            timing = checked_run(t, "block", "none", sp.name, timing, None, True)  # a rerun keeps the table's estimator
            measure_invocation(t, agent, timing)
            run = profile_into(t, agent, ops, timing, resolutions=res)
            invocation = t.meta_get(INVOCATION_META)  # each batch added a sample; or why it failed
            est = t.estimates()
            rows = sorted(t.measurements(), key=lambda m: -est.get(m.key, 0.0))
    finally:
        agent.close()
    con.print(f"{sp.name} at {st.table_resolution}: {len(ops)} unique blocks; {run.measured} measured now, "
              f"{run.skipped} already in {st.table} ({run.wall_s:.1f} s); profile {agent.profile.describe()}; "
              f"{context_line(timing, invocation)}", markup=False)
    tab = Table(title="slowest blocks (ms)", title_justify="left")
    for col in ("key", "median", "IQR", "n", "note"):
        tab.add_column(col, overflow="fold")
    for m in rows[:5]:
        s_ = m.stats
        tab.add_row(m.key, f"{s_.median:.4f}", f"{s_.iqr:.4f}", str(s_.n), "unstable" if s_.unstable else "")
    con.print(tab)
    con.print(f"next: latbench table show {st.table}  |  latbench profile --device tflite --space "
              f"{sp.name} --out tflite.sqlite", markup=False)


def _qs_validate(st: QuickstartState, con: Console) -> None:
    """Measure a few subnets of the profile step's table end to end; print the accuracy figures."""
    from .cli_validate import quickstart_validate

    quickstart_validate(st, con)


# The quickstart is a list of steps; later stages append predict, validate and search steps.
QUICKSTART_STEPS: list[tuple[str, Callable[[QuickstartState, Console], None]]] = [
    ("search space", _qs_space),
    ("enumerate ops", _qs_ops),
    ("enumerate blocks", _qs_blocks),
    ("sample subnets", _qs_sample),
    ("keys and formats", _qs_keys),
    ("profile with ONNX Runtime", _qs_profile),
    ("validate against end-to-end runs", _qs_validate),
]


def _qs_search(st: QuickstartState, con: Console) -> None:
    """Search the table the profile step built (`st.table`) for the best subnet under a budget."""
    from .cli_search import quickstart_search

    quickstart_search(st, con)


QUICKSTART_STEPS.append(("search under a latency budget", _qs_search))  # last: needs st.table


@app.command("quickstart")
def quickstart_cmd(
    space: str = typer.Option("ofa-mbv3-w10", "--space", "-s", help="Space to run on."),
    resolution: Optional[List[int]] = typer.Option(
        None, "--resolution", "-r", help="Resolutions (default: those of 160, 192, 224 the space allows)."),
    samples: int = typer.Option(200, "--samples", min=1, help="Random subnets to sample."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed."),
    workdir: Path = typer.Option(Path("latbench-quickstart"), "--workdir", help="Where tables and reports go (reused: a rerun resumes)."),
) -> None:
    """Run latbench end to end on built-in defaults (no device needed)."""
    st = QuickstartState(space, tuple(resolution or ()), samples, seed, workdir=workdir)
    con = _stdout()
    t_all = time.perf_counter()
    for i, (title, step) in enumerate(QUICKSTART_STEPS, 1):
        con.rule(f"[bold]{i}/{len(QUICKSTART_STEPS)} {title}", align="left")
        t0 = time.perf_counter()
        step(st, con)
        _stderr().print(f"[dim]step {i} {title}: {time.perf_counter() - t0:.2f} s[/dim]")
    con.rule(f"done in {time.perf_counter() - t_all:.1f} s", align="left")


# ---------------------------------------------------------------------- commands of later stages
def _mount_stage_commands() -> None:
    """Attach the commands other modules define (`profile`, `table ...`); they import only typer
    at module level, so `latbench --help` stays fast. A module that fails to import is an error
    of every command (see `run`), never a command that silently vanishes."""
    from .cli_devices import devices_command
    from .cli_predict import predict_command
    from .cli_profile import profile_command
    from .cli_search import accuracy_app, search_command
    from .cli_supernet import supernet_app
    from .cli_table import table_app
    from .cli_validate import calibrate_command, validate_command

    app.command("profile")(profile_command)
    app.command("devices")(devices_command)
    app.command("predict")(predict_command)
    app.command("calibrate")(calibrate_command)
    app.command("validate")(validate_command)
    app.add_typer(table_app, name="table")
    app.command("search")(search_command)
    app.add_typer(accuracy_app, name="accuracy")
    app.add_typer(supernet_app, name="supernet")


try:
    _mount_stage_commands()
    _MOUNT_ERROR: Optional[BaseException] = None
except Exception as _e:  # reported by run() as one line, whatever command was asked for
    _MOUNT_ERROR = _e


# ---------------------------------------------------------------------- entry point
INTERRUPT_GRACE_S = 1.0  # after SIGTERM / Ctrl-C, how long cleanup may run before the process ends
_INTERRUPTS = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
_caught: list[str] = []  # the interrupting signal's name, for the error line


def _raise_interrupt(signum, frame):
    """SIGTERM and SIGINT stop a command the same way: KeyboardInterrupt in the main thread."""
    _caught.append(_INTERRUPTS.get(signum, f"signal {signum}"))
    raise KeyboardInterrupt


class _InterruptWatch:
    """SIGTERM and Ctrl-C end any command within about a second. Python runs signal handlers only
    between bytecodes, so a native call (an ONNX Runtime run, a session build) would delay the
    KeyboardInterrupt by as long as it lasts; CPython's C-level handler also writes the signal
    number to a socket at once, which a daemon thread reads: if the command has not finished
    INTERRUPT_GRACE_S later, the thread ends the process (exit 130). Every row is committed to
    SQLite (WAL) as it is stored, so ending the process loses nothing committed."""

    def __enter__(self) -> "_InterruptWatch":
        self.done = threading.Event()
        self._sock, self._wake = socket.socketpair()
        self._wake.setblocking(False)
        try:
            self._old_fd = signal.set_wakeup_fd(self._wake.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread: signals are not this run's to handle
            self._old_fd = None
            self._sock.close()
            return self
        # a signal ignored by whoever started us (SIGINT of a `cmd &` job) stays ignored
        self._old = {s: signal.signal(s, _raise_interrupt) for s in _INTERRUPTS
                     if signal.getsignal(s) is not signal.SIG_IGN}
        threading.Thread(target=self._watch, name="latbench-interrupt", daemon=True).start()
        return self

    def _watch(self) -> None:
        try:
            signum = self._next_interrupt()
            if signum is None or self.done.wait(INTERRUPT_GRACE_S):
                return
            os.write(2, (f"latbench: error: interrupted by {_INTERRUPTS[signum]}: still busy "
                         f"{INTERRUPT_GRACE_S:g} s later (in a native call Python cannot interrupt), "
                         f"so ended there; everything committed before is kept\n").encode())
            os._exit(EXIT_INTERRUPTED)
        finally:
            self._sock.close()

    def _next_interrupt(self) -> Optional[int]:
        """Block until SIGINT or SIGTERM arrives (its number) or the run ends (None); the bytes
        of other signals with a Python handler (SIGCHLD, say) are passed over."""
        while True:
            for b in self._sock.recv(64) or b"\0":
                if b == 0:
                    return None
                if b in _INTERRUPTS:
                    return b

    def __exit__(self, *exc) -> None:
        self.done.set()
        if self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
            for s, handler in self._old.items():
                if handler is not None:  # None: set outside Python, cannot be put back from here
                    signal.signal(s, handler)
            with contextlib.suppress(OSError):
                self._wake.send(b"\0")  # stops the watching thread
        self._wake.close()


def _error_line(msg: str) -> None:
    one = " ".join(msg.split())
    print(f"latbench: error: {one}", file=sys.stderr, flush=True)


def _click_error_line(e: Exception) -> None:
    """A typer/click usage error (missing option, bad value, unknown command) as one line."""
    if type(e).__name__ == "NoArgsIsHelpError":  # the help is printed already
        return
    ctx = getattr(e, "ctx", None)
    msg = e.format_message().rstrip(".") if hasattr(e, "format_message") else str(e)
    if ctx is None:
        _error_line(msg)
    else:
        _error_line(f"{ctx.command_path}: {msg} (see {ctx.command_path} --help)")


def _last_own_frame(e: BaseException) -> str:
    """`file:line (source)` of the last traceback frame inside the latbench package."""
    import traceback

    here = os.path.dirname(os.path.abspath(__file__))
    own = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith(here)]
    if not own:
        return "?"
    f = own[-1]
    return f"{os.path.relpath(f.filename, os.path.dirname(here))}:{f.lineno} ({(f.line or '').strip()})"


def _interrupted() -> int:
    _error_line("interrupted" + (f" by {_caught[-1]}" if _caught else ""))
    return EXIT_INTERRUPTED


def run(argv: Optional[List[str]] = None) -> int:
    """Run the app on argv (default sys.argv[1:]) and return the exit code; never raises."""
    _caught.clear()
    with _InterruptWatch():
        return _run(argv)


def _run(argv: Optional[List[str]]) -> int:
    if _MOUNT_ERROR is not None:
        _error_line(f"latbench is broken: loading its commands failed at {_last_own_frame(_MOUNT_ERROR)}: "
                    f"{type(_MOUNT_ERROR).__name__}: {_MOUNT_ERROR}")
        return EXIT_ERROR
    try:
        rv = app(args=argv, prog_name="latbench", standalone_mode=False)
        if rv == EXIT_INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130) itself
            return _interrupted()
        return rv if isinstance(rv, int) else EXIT_OK
    except _CLI_ERRORS as e:
        _click_error_line(e)
        return int(getattr(e, "exit_code", EXIT_USAGE))
    except typer.Abort:
        _error_line("aborted")
        return EXIT_ERROR
    except LatbenchError as e:
        _error_line(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:
        if os.environ.get("LATBENCH_DEBUG"):
            raise
        _error_line(f"internal error: {type(e).__name__}: {e} (set LATBENCH_DEBUG=1 for the traceback)")
        return EXIT_ERROR


def main() -> None:
    """Console-script entry point: `latbench ...` and `python cli.py ...`."""
    sys.exit(run())


if __name__ == "__main__":  # pragma: no cover
    main()
