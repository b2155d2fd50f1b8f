"""Validate and calibrate on the farm: each table measured end to end on a device of its own
profile (the plain yardstick of latbench.validate), tables of different profiles at once.

A table's validation runs whole on one device: its yardstick passes, noise ceiling and drift
re-timings only mean something on one device. The driver sends a snapshot of the table (and of
its op baseline table), the device measures, and the driver writes what comes back: the
calibration into the table, the op baseline table beside it, the CSV and plot where asked."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..errors import DeviceUnavailableError, LatbenchError, UsageError
from .driver import Farm
from .registry import FarmDevice
from .worker import FAILED, LOST


@dataclass
class EndToEnd:
    """One table's validation or calibration on the farm: what came back and where it ran."""

    table: str
    result: dict[str, Any] = field(default_factory=dict)
    device: str = ""
    tried: list[str] = field(default_factory=list)  # devices that went away under it


def farm_end_to_end(address_or_ray, command: str, tables: Sequence[str], space: str, kwargs: Mapping[str, Any],
                    op_tables: Mapping[str, str] | None = None, files: Mapping[str, Mapping[str, str]] | None = None,
                    on_line: Callable[[str], None] | None = None, wait_s: float = 60.0) -> list[EndToEnd]:
    """Run `command` (validate or calibrate) of each table on an idle device of its profile (a
    device that goes away hands the table to another one; none left for `wait_s`: refused in one
    line). `op_tables`: validate's op baseline table per table (default beside it); `files`:
    per table, {"csv": path, "plot": path} to write."""
    from ..store import LatencyTable
    from ..tablemeta import CalibrationEntry
    from ..validate.opsum import op_table_path
    from .ray_env import connect

    if command not in ("validate", "calibrate"):
        raise UsageError(f"`command` must be validate or calibrate, got {command!r}")
    say = on_line or (lambda line: None)
    ray = connect(address_or_ray) if isinstance(address_or_ray, str) else address_or_ray
    jobs: dict[str, dict[str, Any]] = {}
    for path in tables:
        with LatencyTable.open(path, create=False, readonly=True) as t:
            op_path = (op_tables or {}).get(path) or op_table_path(t.path)
            op_bytes = None
            if command == "validate" and os.path.isfile(op_path):
                with LatencyTable.open(op_path, create=False, readonly=True) as ot:
                    op_bytes = ot.snapshot_bytes()
            jobs[path] = {"profile": t.require_profile().id, "data": t.snapshot_bytes(), "op_path": op_path,
                          "op_bytes": op_bytes, "out": EndToEnd(path)}
    space_arg = space_for_device(space)
    want = {path: tuple((files or {}).get(path, {})) for path in tables}
    pending = list(tables)
    inflight: dict[Any, tuple[str, FarmDevice]] = {}
    farm = Farm(ray)
    since = last_look = time.monotonic()
    while pending or inflight:
        if time.monotonic() - last_look > 2.0:
            last_look = time.monotonic()
            farm.look()
            farm.probe_offline()
        farm.answers()
        used = {d.device_id for _, d in inflight.values()}
        for path in list(pending):
            j = jobs[path]
            free = [d for d in farm.of_profile(j["profile"]) if d.state != "offline" and d.device_id not in used]
            if not free:
                continue
            d = free[0]
            used.add(d.device_id)
            pending.remove(path)
            ref = d.handle.end_to_end.remote(command, j["data"], space_arg, {**kwargs, "files": want[path], "where": path}, j["op_bytes"])
            inflight[ref] = (path, d)
            say(f"{os.path.basename(path)}: {command} on {d.device_id} ({d.node})")
        if pending and not inflight:
            if time.monotonic() - since > wait_s:
                raise DeviceUnavailableError(f"no device of the profile of {', '.join(pending)} is up in the farm "
                                             f"(waited {wait_s:g} s; `latbench farm devices` lists them)")
            time.sleep(0.5)
            continue
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
        for ref in ready:
            path, d = inflight.pop(ref)
            j = jobs[path]
            try:
                res = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - Ray's errors for a dead node or actor
                res = {LOST: f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
            if LOST in res:
                d.state, d.error = "offline", res[LOST]
                j["out"].tried.append(d.device_id)
                pending.append(path)
                since = time.monotonic()
                say(f"{d.device_id} went away during {command} of {os.path.basename(path)} ({res[LOST][:160]}): "
                    f"it runs again on another device of its profile")
                continue
            if FAILED in res:
                raise _device_error(res, f"{command} on {d.device_id}")
            j["out"].result, j["out"].device = res, d.device_id
            if command == "calibrate":
                with LatencyTable.open(path, create=False) as t:
                    t.set_calibration(CalibrationEntry.from_dict(res["calibration"], f"calibration from {d.device_id}"))
            else:
                if res.get("op_table"):
                    _write(j["op_path"], res["op_table"])
                for name, dest in (files or {}).get(path, {}).items():
                    if name in res.get("files", {}):
                        _write(dest, res["files"][name])
    return [jobs[p]["out"] for p in tables]


def _device_error(res: Mapping[str, Any], where: str) -> LatbenchError:
    """The error a device reported, as the latbench error it raised there (a UsageError stays
    one: exit 2), saying where it ran."""
    from .. import errors

    cls = getattr(errors, str(res.get("error_type", "")), None)
    if isinstance(cls, type) and issubclass(cls, LatbenchError):
        return cls(f"{res.get('message') or res[FAILED]} ({where})")
    return LatbenchError(f"{where} failed: {res[FAILED]}")


def space_for_device(space: str) -> str | dict[str, str]:
    """The space as a device's host can load it: a built-in name as it is, a YAML file as its text
    (the file exists only on the driver's host)."""
    from ..spaces import list_spaces

    if space in list_spaces() or not os.path.isfile(space):
        return space
    with open(space) as f:
        return {"yaml": f.read(), "file": os.path.basename(space)}


def _write(path: str, data: bytes) -> None:
    """Write a whole file at once (a temp file renamed over it: never half a table)."""
    tmp = f"{path}.part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
