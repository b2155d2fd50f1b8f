"""Small entry points of the public API that have no better home (see latbench/__init__.py)."""
from __future__ import annotations

from typing import Any


def open_table(path: Any, readonly: bool = True, profile: Any = None, create: bool = False):
    """A latency table (latbench.store.LatencyTable; use it in a `with` block): read-only by default
    (no write access needed, no file created); `readonly=False` to write, `create=True` (with a
    device `profile`) to make a new one."""
    from .store import LatencyTable

    return LatencyTable.open(path, profile, create=create and not readonly, readonly=readonly)


__all__ = ["open_table"]
