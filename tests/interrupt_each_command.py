"""Helper of test_sigterm (run as a script): each stdin line is a latbench command line (JSON),
run in this process through `latbench.cli.run` with SIGTERM sent at the command's first call into
the library; prints one JSON line per command: [argv, exit code, the function hit, stderr]."""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import json
import os
import signal
import sys

import latbench
from latbench.cli import run

PKG = os.path.dirname(os.path.dirname(os.path.realpath(latbench.__file__)))
LIB = tuple(os.path.join(PKG, d) + os.sep for d in ("latbench", "device_agents"))
CLI = os.path.join(PKG, "latbench", "cli") + os.sep
hit: list[str] = []


def hook(frame, event, arg) -> None:
    """Profile hook: at the first call from a command module into a library function, SIGTERM."""
    code, caller = frame.f_code, frame.f_back.f_code.co_filename if frame.f_back else ""
    if (event == "call" and not code.co_name.startswith(("<", "__")) and code.co_filename.startswith(LIB)
            and not code.co_filename.startswith(CLI) and caller.startswith(CLI)):
        sys.setprofile(None)
        hit.append(f"{os.path.relpath(code.co_filename, PKG)}:{code.co_name}")
        os.kill(os.getpid(), signal.SIGTERM)


def traced(callback):
    """The command's callback with the hook on while it runs (not while typer parses)."""

    @functools.wraps(callback)
    def command(*args, **kwargs):
        sys.setprofile(hook)
        return callback(*args, **kwargs)

    return command


def trace_commands(typer_app) -> None:
    for info in typer_app.registered_commands:
        info.callback = traced(info.callback)
    for group in typer_app.registered_groups:
        trace_commands(group.typer_instance)


def main() -> None:
    for module in sys.argv[1:]:  # what commands import inside, imported before the hook slows calls
        with contextlib.suppress(ImportError):  # an extra not installed: its commands say so themselves
            importlib.import_module(module)
    trace_commands(sys.modules["latbench.cli.app"].app)
    for line in sys.stdin:
        argv = json.loads(line)
        hit.clear()
        err = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                code = run(argv)
        finally:
            sys.setprofile(None)
        print(json.dumps([argv, code, hit[:1], err.getvalue()]), flush=True)


if __name__ == "__main__":
    main()
