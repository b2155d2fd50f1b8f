"""Killing a Ray node of a cluster this process started (tests/test_farm.py, benchmarks/farm.py):
a host that dies, its raylet and every process under it SIGKILLed at once."""
from __future__ import annotations

import os
import signal
from pathlib import Path


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process now."""
    procs = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(pid)] = (ppid, cmd)
    return procs


def _tree(procs: dict[int, tuple[int, str]], roots) -> list[int]:
    out, todo = [], list(roots)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, (pp, _) in procs.items() if pp == p and c not in out]
    return out


def node_pids(resource: str) -> list[int]:
    """The processes of the Ray node that advertises the custom resource `resource`: its raylet
    (whose command line lists it) and everything under it, among this process's descendants only
    (another session's cluster on this host is never touched)."""
    procs = _processes()
    mine = set(_tree(procs, [os.getpid()]))
    roots = [p for p, (_, cmd) in procs.items() if p in mine and "/raylet/raylet " in cmd and f"{resource}," in cmd]
    return _tree(procs, roots)


def kill_node(resource: str) -> list[int]:
    """SIGKILL every process of the node advertising `resource`; the pids killed."""
    pids = node_pids(resource)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids
