"""The `latbench` command line (typer + rich): data to stdout, progress and logs to stderr.

Only this module turns library errors into one `latbench: error: ...` line and an exit code:
0 ok, 1 error, 2 usage, 3 partial result, 4 device unavailable, 130 interrupted. Heavy modules
(numpy, the spaces, torch) are imported inside the commands so `latbench --help` stays fast.
"""
from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import sys
import threading
from typing import List, Optional

import typer
import typer.main

from ..errors import LatbenchError
from .flags import cli_words

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


# ---------------------------------------------------------------------- commands of later stages
def _mount_stage_commands() -> None:
    """Attach the commands the command modules define (`profile`, `table ...`); they import only typer
    at module level, so `latbench --help` stays fast. A module that fails to import is an error
    of every command (see `run`), never a command that silently vanishes."""
    from .devices import devices_command
    from .enumerate import enumerate_cmd, spaces_cmd
    from .farm import farm_app
    from .fit import fit_command, transfer_command
    from .ops import ops_command
    from .predict import predict_command
    from .profile import profile_command
    from .quickstart import quickstart_cmd
    from .search import accuracy_app, search_command
    from .supernet import supernet_app
    from .table import table_app
    from .validate import calibrate_command, validate_command

    app.command("spaces")(spaces_cmd)
    app.command("enumerate")(enumerate_cmd)
    app.command("quickstart")(quickstart_cmd)
    app.command("ops")(ops_command)
    app.command("profile")(profile_command)
    app.command("devices")(devices_command)
    app.command("predict")(predict_command)
    app.command("calibrate")(calibrate_command)
    app.command("validate")(validate_command)
    app.command("fit")(fit_command)
    app.command("transfer")(transfer_command)
    app.add_typer(table_app, name="table")
    app.command("search")(search_command)
    app.add_typer(accuracy_app, name="accuracy")
    app.add_typer(supernet_app, name="supernet")
    app.add_typer(farm_app, name="farm")


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

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the latbench package
    own = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith(here)]
    if not own:
        return "?"
    f = own[-1]
    return f"{os.path.relpath(f.filename, os.path.dirname(here))}:{f.lineno} ({(f.line or '').strip()})"


def _interrupted() -> int:
    _error_line("interrupted" + (f" by {_caught[-1]}" if _caught else ""))
    return EXIT_INTERRUPTED


@functools.lru_cache(maxsize=1)
def _command():
    """The click command typer builds from `app`: it inspects every command's signature (~40 ms),
    so it is built once per process, not at every `run` (Python callers and tests run many)."""
    return typer.main.get_command(app)


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
        rv = _command().main(args=argv, prog_name="latbench", standalone_mode=False)
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
        _error_line(cli_words(str(e)))  # library parameters said as the flags that set them
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
