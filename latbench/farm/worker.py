"""DeviceWorker: the body of the Ray actor that holds one device on its host (made an actor by
latbench.farm.node). It builds the device's agent from its spec, plans how the device times a
table, measures batches of ops, and validates or calibrates a table on the device. Everything
it takes and returns is plain JSON-able data; a device that goes away is reported, not raised."""
from __future__ import annotations

import os
import socket
import tempfile
import threading
from typing import Any, Mapping, Sequence

from ..errors import DeviceUnavailableError, LatbenchError
from .discover import DeviceEntry

LOST, FAILED = "lost", "error"  # keys of a batch result that did not measure


def _line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:400]


class DeviceWorker:
    """One device of the farm, held on the host that has it. States: idle, busy, hot (busy, waiting
    for the phone to cool), offline (its agent cannot be built or the device went away)."""

    def __init__(self, entry: Mapping[str, Any]):
        self.entry = DeviceEntry.from_dict(entry)
        self.agent = None
        self.profile = None  # the device's DeviceProfile once its agent was built (kept while offline)
        self.error = ""
        self.busy = False
        self.batches = 0
        self._lock = threading.Lock()  # one measuring call at a time; describe() answers meanwhile
        self._build()

    # ---------------------------------------------------------------- the agent
    def _build(self) -> None:
        """(Re)build the agent from the entry's spec; a device that is not there leaves it offline."""
        from device_agents import agent_from_profile

        if self.agent is not None:
            return
        try:
            agent = agent_from_profile(self.entry.spec)
            self.profile = agent.profile  # probe the device now: offline is known before work is given
            self.agent, self.error = agent, ""
        except LatbenchError as e:
            self.agent, self.error = None, _line(e)

    def _lost(self, e: BaseException) -> dict[str, Any]:
        """The device went away: drop the agent (a probe rebuilds it) and say so."""
        agent, self.agent, self.error = self.agent, None, _line(e)
        if agent is not None:
            try:
                agent.close()
            except Exception:  # noqa: BLE001 - the device is gone; its cleanup may fail too
                pass
        return {LOST: self.error}

    # ---------------------------------------------------------------- what the driver asks
    def state(self) -> str:
        if self.agent is None:
            return "offline"
        if self.busy:
            return "hot" if getattr(self.agent, "cooling", False) else "busy"
        return "idle"

    def describe(self) -> dict[str, Any]:
        """The device as the farm lists it: entry, state, host, and its profile where known (an
        offline device keeps the one it had)."""
        p = self.profile
        info = (p.info or {}) if p else {}
        return {**self.entry.to_dict(), "state": self.state(), "error": self.error, "host": socket.gethostname(),
                "pid": os.getpid(), "batches": self.batches, "profile_id": p.id if p else None,
                "profile": p.to_dict() if p else None, "model": (p.device if p else "") or info.get("model", ""),
                "soc": (p.soc if p else "") or info.get("soc", ""), "host_cpu": self.entry.host_cpu}

    def probe(self) -> dict[str, Any]:
        """Try an offline device again (it may have come back); describe it."""
        if not self.busy:
            self._build()
        return self.describe()

    def plan(self, timing: Mapping[str, Any] | None, context: str = "auto", context_mb: float | None = None,
             want_bytes: int | None = None) -> dict[str, Any]:
        """How this device times a table: latbench's profile defaults (`timing` overrides, as
        TimingSettings fields; None for the defaults; rounds and interleave only where latbench's
        loop times the ops) in the cache context asked for where the device can time in it, capped
        by this host's cache (`want_bytes`: the space's subnet weights); the agent's fusion and
        batch length."""
        from ..profiler import default_timing, timing_for

        agent = self._ready()
        kw = dict(timing or {})
        rounds, interleave = kw.pop("rounds", None), kw.pop("interleave", None)
        if not agent.interleaves:  # rounds are latbench's loop's; a runner on the device times ops in one go
            rounds = interleave = None
        t = default_timing(agent, rounds=rounds, interleave=interleave, **kw)
        if context_mb is None and want_bytes is not None and context != "warm" and "network" in agent.contexts:
            context_mb = want_bytes / (1 << 20)
        t = timing_for(agent, t, context, None, context_mb)
        return {"timing": t.to_dict(), "fusion": getattr(agent, "fusion", "none"), "batch_len": agent.batch_len(t),
                "own_loop": bool(agent.interleaves), "agent": agent.name}

    def _ready(self):
        self._build()
        if self.agent is None:
            raise DeviceUnavailableError(f"{self.entry.device_id} is offline: {self.error}")
        return self.agent

    def _work(self, job, errors: tuple = (Exception,)) -> dict[str, Any]:
        """Run `job(agent)` as the device's one piece of work at a time: its dict back, or
        {"lost": why} when the device is or goes away, or {"error": why} for one of `errors`."""
        with self._lock:
            try:
                agent = self._ready()
            except DeviceUnavailableError as e:
                return {LOST: _line(e)}
            self.busy = True
            try:
                return job(agent)
            except DeviceUnavailableError as e:
                return self._lost(e)
            except errors as e:  # the driver decides: another device, or stored failed
                return {FAILED: _line(e), "error_type": type(e).__name__, "message": str(e)}
            finally:
                self.busy = False

    def measure(self, ops: Sequence[Mapping[str, Any]], timing: Mapping[str, Any]) -> dict[str, Any]:
        """Time `ops` (OpSpec dicts) in order under `timing`: {"results": [Measurement dicts]}, or
        {"lost": why} when the device went away, or {"error": why} when the batch could not run."""
        from ..measure import TimingSettings
        from ..ops import OpSpec

        def job(agent) -> dict[str, Any]:
            out = [m.to_dict() for m in agent.measure([OpSpec.from_dict(o) for o in ops],
                                                      TimingSettings.from_dict(dict(timing)))]
            self.batches += 1
            return {"results": out}

        return self._work(job)

    def end_to_end(self, command: str, table_bytes: bytes, space: str | Mapping[str, str], kwargs: Mapping[str, Any],
                   op_table_bytes: bytes | None = None) -> dict[str, Any]:
        """Run `validate` or `calibrate` of a copy of the table (`table_bytes`) on this device:
        {"report": plain data, "lines": the report's text (validate), "calibration": the entry to
        store (calibrate), "op_table": the op baseline table's bytes (validate)} or {"lost"|"error": why}."""
        def job(agent) -> dict[str, Any]:
            kw = dict(kwargs)
            where = kw.pop("where", "")  # the table's path on the driver's host, for messages
            with tempfile.TemporaryDirectory(prefix="latbench-farm-") as d:
                try:
                    return _end_to_end(agent, command, d, table_bytes, space, kw, op_table_bytes)
                except LatbenchError as e:
                    if where:
                        e.args = (str(e).replace(os.path.join(d, "table.sqlite"), where),)
                    raise

        return self._work(job, (LatbenchError,))

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
            self.agent = None


def _end_to_end(agent, command: str, d: str, table_bytes: bytes, space: str | Mapping[str, str], kwargs: dict,
                op_table_bytes: bytes | None) -> dict[str, Any]:
    """validate/calibrate on `agent` in the scratch directory `d` (see DeviceWorker.end_to_end)."""
    from ..measure import TimingSettings
    from ..spaces import get_space
    from ..store import LatencyTable
    from ..yardstick import YardstickSettings

    path = os.path.join(d, "table.sqlite")
    with open(path, "wb") as f:
        f.write(table_bytes)
    if kwargs.get("yardstick") is not None:
        kwargs["yardstick"] = YardstickSettings(**kwargs["yardstick"])
    if kwargs.get("timing") is not None:
        kwargs["timing"] = TimingSettings.from_dict(kwargs["timing"])
    want = kwargs.pop("files", ())  # validate: "csv" and/or "plot", sent back as bytes
    asked = kwargs.pop("statistic_asked", True)
    if kwargs.get("yardstick") is not None:  # the statistic this device's runner reports, as the CLI picks it
        from ..validate.endtoend import agent_yardstick

        kwargs["yardstick"] = agent_yardstick(agent, kwargs["yardstick"], asked)
    if isinstance(space, Mapping):  # a YAML space sent as its text (latbench.farm.endtoend.space_for_device)
        space_path = os.path.join(d, os.path.basename(space["file"]) or "space.yaml")
        with open(space_path, "w") as f:
            f.write(space["yaml"])
        space = space_path
    sp = get_space(space)
    if command == "calibrate":
        from ..calibrate import calibrate, calibration_entry

        with LatencyTable.open(path, create=False, readonly=True) as t:
            run = calibrate(t, sp, agent, **kwargs)
            entry = calibration_entry(t, run, seed=kwargs.get("seed", 0),
                                      resolutions=sorted({r.resolution for r in run.subnets}))
        return {"report": run.to_dict(), "calibration": entry.to_dict()}
    from ..validate import validate
    from ..validate.report import plot, write_csv

    op_path = os.path.join(d, "ops.sqlite")
    if op_table_bytes:
        with open(op_path, "wb") as f:
            f.write(op_table_bytes)
    rep = validate(path, sp, agent=agent, op_table=op_path, **kwargs)
    out: dict[str, Any] = {"report": rep.to_dict(), "lines": rep.summary_lines(), "files": {}}
    for name, write in (("csv", write_csv), ("plot", plot)):
        if name in want:
            f = os.path.join(d, f"out.{name}")
            write(rep, f)
            with open(f, "rb") as fh:
                out["files"][name] = fh.read()
    if os.path.isfile(op_path):
        with LatencyTable.open(op_path, create=False, readonly=True) as t:
            out["op_table"] = t.snapshot_bytes()
    return out
