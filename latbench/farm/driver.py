"""The farm's driver: one table per device profile, built by all of that profile's devices at once.

Each table's missing ops are cut into batches (the agent's own batch: an interleaved round set, a
phone's push-and-run) kept in a queue; whenever a device of the profile is idle it takes the next
batch (so fast devices take more: work stealing), and the results come back through Ray to the
driver, the only writer of every table, which commits each row as its batch ends. A device that
goes away (its node killed, a phone unplugged) gives its batch back to the front of the queue for
another device of the profile; a batch that fails on every device it tries (3 at most) is stored
failed with its errors. Devices that come back, or new ones, join at the next look (every
`rescan_s`). Host runtimes of one host (ort, tflite, cpu) take turns: they share its cores.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..device import DeviceProfile
from ..errors import DeviceUnavailableError, UsageError
from ..measure import Measurement, TimingSettings
from ..ops import OpSpec
from ..profiler import checked_run, default_granularity, is_op_file, rows_fusion, select_ops
from ..profiling import (RETIME, ProfileRun, Retimes, check_max_ops, companions, pick_retimes, plan_todo,
                         settle_batch, store_result)
from ..runmeta import INVOCATION_OP, needs_invocation, record_invocation
from .registry import FarmDevice, list_farm
from .worker import FAILED, LOST

MAX_TRIES = 3  # devices a batch that fails (not lost) is tried on before it is stored failed


@dataclass
class Batch:
    """Ops a device times together; `kind` ops, retime or invocation."""

    ops: list[OpSpec]
    kind: str = "ops"
    tried: list[str] = field(default_factory=list)  # devices it failed on (not lost on)
    errors: list[str] = field(default_factory=list)
    lost_at: float | None = None  # when its device went away, until it runs again


@dataclass
class Job:
    """One table: a device profile's ops, queue and run."""

    profile_id: str
    path: str
    table: Any
    plan: dict[str, Any]
    timing: TimingSettings
    resolutions: dict[str, list[int]]
    run: ProfileRun
    queue: deque = field(default_factory=deque)
    comps: tuple = ()
    phase: str = "measure"  # measure, retime, done
    retimes: Retimes | None = None
    written: set = field(default_factory=set)
    inflight: int = 0
    t0: float = field(default_factory=time.monotonic)
    done_ops: int = 0
    todo: int = 0
    waiting_since: float | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def enqueue(self, ops: Sequence[OpSpec], kind: str = "ops") -> None:
        """Queue `ops` in batches of the agent's batch length, less the companions each batch ends with."""
        per = max(1, self.plan["batch_len"] - len(self.comps))
        self.queue.extend(Batch(list(ops[i:i + per]), kind) for i in range(0, len(ops), per))


@dataclass
class FarmRun:
    """What a farm profile did: a ProfileRun per table, and the farm's own record."""

    runs: list[ProfileRun] = field(default_factory=list)
    devices: dict[str, int] = field(default_factory=dict)  # device id -> batches it measured
    requeued: int = 0  # batches given back by a device that went away
    reschedule_s: list[float] = field(default_factory=list)  # from a device found gone to its batch running again
    lost: list[str] = field(default_factory=list)  # "device: why", as each went away
    failed_batches: int = 0  # stored failed after failing on every device tried
    duplicates: int = 0  # results for keys already written in this run (discarded)
    interrupted: bool = False
    wall_s: float = 0.0
    batches: int = 0
    dispatch_s: float = 0.0  # driver time spent choosing, submitting and storing (not waiting)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.ok for r in self.runs)

    def to_dict(self) -> dict[str, Any]:
        return {"tables": [r.to_dict() for r in self.runs], "devices": self.devices, "requeued": self.requeued,
                "reschedule_s": [round(x, 3) for x in self.reschedule_s], "lost": self.lost,
                "failed_batches": self.failed_batches, "duplicates": self.duplicates, "interrupted": self.interrupted,
                "wall_s": round(self.wall_s, 3), "batches": self.batches, "dispatch_s": round(self.dispatch_s, 4)}


def table_name(source, kind: str, profile_id: str) -> str:
    """A profile's table file name: what was profiled, the agent, the profile id."""
    if isinstance(source, (str, os.PathLike)):
        stem = os.path.splitext(os.path.basename(os.fspath(source)))[0]
    else:
        stem = getattr(source, "name", None) or "ops"
    return f"{stem}-{kind}-{profile_id}.sqlite"


class Farm:
    """The devices of a farm as one driver uses them: handles, states, and who is busy. Listed
    once when made (waiting up to `timeout` for every device to answer; those that do not are
    asked again by the first `look()`); after that the driver
    never waits on a device to look: `look()` and `probe_offline()` send their questions and
    `answers()` takes the replies that are in."""

    def __init__(self, ray, device: Sequence[str] | None = None, timeout: float = 3.0):
        self.ray, self.kinds = ray, tuple(device or ())
        self.devices: dict[str, FarmDevice] = {}
        self.busy: dict[str, Any] = {}  # device id -> ref of its batch in flight
        self.asked: dict[Any, tuple[str, Any]] = {}  # ref of a describe/probe -> (actor name, handle)
        self.seen: set[str] = set()  # actor names described (or being asked)
        for d in list_farm(ray, timeout, probe=True):
            if d.answered:  # one that did not is asked again by look() (a device whose actor is starting)
                self.seen.add(d.actor)
            if self._wanted(d) and d.profile_id is not None:
                self.devices[d.device_id] = d

    def _wanted(self, d: FarmDevice) -> bool:
        return not self.kinds or d.kind in self.kinds

    def look(self) -> None:
        """Ask every device actor not seen yet (a new device, a restarted node's) to describe itself."""
        from . import NAMESPACE
        from .registry import actor_names

        for name in actor_names(self.ray):
            if name in self.seen:
                continue
            try:
                handle = self.ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:  # gone between the listing and now
                continue
            self.seen.add(name)
            self.asked[handle.describe.remote()] = (name, handle)

    def probe_offline(self) -> None:
        """Ask each offline device whether it is back (its actor rebuilds its agent)."""
        asking = {name for name, _ in self.asked.values()}
        for d in self.devices.values():
            if d.state == "offline" and d.handle is not None and d.actor not in asking:
                self.asked[d.handle.probe.remote()] = (d.actor, d.handle)

    def answers(self) -> list[FarmDevice]:
        """The replies in so far: devices that joined (new, or a dead actor's device on a new
        actor) or came back, now idle."""
        if not self.asked:
            return []
        ready, _ = self.ray.wait(list(self.asked), num_returns=len(self.asked), timeout=0)
        back = []
        for ref in ready:
            name, handle = self.asked.pop(ref)
            try:
                d = FarmDevice.described(self.ray.get(ref), name, handle)
            except Exception:  # noqa: BLE001 - its actor is dead: the device waits for a new one
                continue
            have = self.devices.get(d.device_id)
            if d.state == "offline" or not self._wanted(d) or d.profile_id is None or d.device_id in self.busy:
                continue
            if have is None or (have.state == "offline" and have.profile_id == d.profile_id):
                self.devices[d.device_id] = dataclasses.replace(d, state="idle")
                back.append(self.devices[d.device_id])
        return back

    def free(self, d: FarmDevice) -> bool:
        """Idle and online; a host runtime also needs the host's other host runtimes idle."""
        if d.state == "offline" or d.device_id in self.busy:
            return False
        if d.host_cpu:
            return not any(self.devices[o].host_cpu and self.devices[o].node == d.node for o in self.busy)
        return True

    def of_profile(self, profile_id: str) -> list[FarmDevice]:
        return [d for d in self.devices.values() if d.profile_id == profile_id]


def farm_profile(address_or_ray, space_or_ops, out_dir: str, *, device: Sequence[str] | None = None,
                 resolutions: Sequence[int] | None = None, granularity: str | None = None,
                 max_ops: int | None = None, retry_failed: bool = False, timing: dict[str, Any] | None = None,
                 context: str = "auto", context_mb: float | None = None, estimator: str | None = None,
                 retime: str = "first", wait_s: float | None = None, rescan_s: float = 2.0,
                 answer_s: float = 3.0,
                 on_line: Callable[[str], None] | None = None,
                 on_progress: Callable[[list[str]], None] | None = None,
                 on_submit: Callable[[FarmDevice, Batch], None] | None = None) -> FarmRun:
    """Profile `space_or_ops` on every device of the farm (`device`: only these agent kinds), one
    table per device profile in `out_dir` (`table_name`), resumed where a table exists. `timing`:
    TimingSettings fields over latbench's profile defaults; `wait_s`: how long a table with work
    left waits for a device of its profile to come (None: until interrupted). `on_line` gets the
    one-line notes (devices lost, waiting), `on_progress` a line per table now and then.
    `estimator` prices the rows of devices timed by latbench's loop; a phone's runner gives its own.
    `answer_s`: how long the first listing waits for each device to answer (one on a node that
    just died holds it that long; those that did not answer are asked again later)."""
    from ..store import LatencyTable
    from .ray_env import connect, get

    check_max_ops(max_ops)
    if retime not in RETIME:
        raise UsageError(f"`retime` must be one of {', '.join(RETIME)}, got {retime!r}")
    say = on_line or (lambda line: None)
    ray = connect(address_or_ray) if isinstance(address_or_ray, str) else address_or_ray
    t_start = time.monotonic()
    farm = Farm(ray, device, answer_s)
    profiles: dict[str, list[FarmDevice]] = {}
    for d in farm.devices.values():
        if d.profile_id:
            profiles.setdefault(d.profile_id, []).append(d)
    if not profiles:
        kinds = f" of kind {', '.join(device)}" if device else ""
        raise DeviceUnavailableError(f"no device{kinds} of the farm answers (`latbench farm devices` lists them)")
    os.makedirs(out_dir, exist_ok=True)
    asked, granularity = granularity, granularity or default_granularity(space_or_ops)
    space_ops: dict[str, tuple] = {}
    listed = is_op_file(space_or_ops) or isinstance(space_or_ops, (list, tuple))
    # the network context a space's subnets read, computed once (each device caps it by its own cache)
    want = _want_bytes(space_or_ops) if not listed and context != "warm" and context_mb is None else None
    jobs: list[Job] = []
    opened: list = []  # every table opened, closed at the end whatever happens
    out = FarmRun()
    try:
        for pid, devs in sorted(profiles.items()):
            first = next((d for d in devs if d.state != "offline"), None)
            if first is None:
                say(f"profile {pid}: none of its devices ({', '.join(d.device_id for d in devs)}) is up; left out")
                continue
            plan = get(ray, first.handle.plan.remote(timing, context, context_mb, want))
            fusion = rows_fusion(space_or_ops, plan["fusion"])
            if fusion not in space_ops:
                space_ops[fusion] = select_ops(space_or_ops, resolutions, granularity, fusion)
            ops, res, space = space_ops[fusion]
            gran = asked or default_granularity(space_or_ops, ops)  # an op list of blocks: block rows
            path = os.path.join(out_dir, table_name(space or (space_or_ops if isinstance(space_or_ops, str) else None),
                                                    plan["agent"], pid))
            table = LatencyTable.open(path, DeviceProfile.from_dict(first.profile), create=True)
            opened.append(table)
            own = plan["own_loop"]
            t = TimingSettings.from_dict(plan["timing"])
            est = estimator if own else None  # a runner on the device gives its own statistic (benchmark_model: mean)
            if est is not None:
                t = dataclasses.replace(t, estimator=est)
            t = checked_run(table, gran, fusion, space.name if space else None, t, est, own)
            run, todo = plan_todo(table, ops, max_ops, retry_failed, resolutions=res)
            run.table, run.device, run.profile_id, run.timing = path, plan["agent"], pid, t
            run.estimator = t.estimator if own else None
            job = Job(pid, path, table, plan, t, res, run, comps=companions(plan["batch_len"]), todo=len(todo))
            if needs_invocation(table, t, retry_failed):
                job.queue.append(Batch([INVOCATION_OP], "invocation"))
            job.enqueue(todo)
            jobs.append(job)
            out.runs.append(run)
        _drive(ray, farm, jobs, out, retime, wait_s, rescan_s, say, on_progress, on_submit)
    except KeyboardInterrupt:
        out.interrupted = True
        for job in jobs:
            if job.phase != "done":
                job.run.interrupted = True
        for ref in list(farm.busy.values()):
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - a batch already running finishes there; its result is dropped
                pass
    finally:
        for job in jobs:
            job.run.wall_s = time.monotonic() - job.t0
            job.run.remaining = job.run.total - job.run.skipped - job.run.measured - job.run.failed
            job.run.invocation = job.table.invocation
        for table in opened:
            table.close()
        out.wall_s = time.monotonic() - t_start
    return out


def _want_bytes(space_or_name) -> int:
    """A space's subnet weight bytes (the network context it is timed in)."""
    from ..predict import resolve_space

    return resolve_space(space_or_name).context_bytes()


def _drive(ray, farm: Farm, jobs: list[Job], out: FarmRun, retime: str, wait_s: float | None, rescan_s: float,
           say, on_progress, on_submit) -> None:
    """The driver's loop: hand batches to idle devices, store what comes back, until every table is done."""
    by_profile = {j.profile_id: j for j in jobs}
    inflight: dict[Any, tuple[FarmDevice, Job, Batch]] = {}
    last_look = last_progress = time.monotonic()
    while any(j.phase != "done" for j in jobs):
        t0 = time.perf_counter()
        for job in jobs:
            _advance(job, retime)
        # hand a batch to every free device whose table has one
        for d in sorted(farm.devices.values(), key=lambda d: d.device_id):
            job = by_profile.get(d.profile_id)
            if job is None or not job.queue or not farm.free(d):
                continue
            batch = job.queue.popleft()
            ops = [*batch.ops, *(op for _, op in (() if batch.kind == "invocation" else job.comps))]
            ref = d.handle.measure.remote([op.to_dict() for op in ops], job.timing.to_dict())
            now = time.monotonic()
            if batch.lost_at is not None:
                out.reschedule_s.append(now - batch.lost_at)
                batch.lost_at = None
            inflight[ref] = (d, job, batch)
            farm.busy[d.device_id] = ref
            d.state = "busy"
            job.inflight += 1
            job.waiting_since = None
            if on_submit:
                on_submit(d, batch)
        out.dispatch_s += time.perf_counter() - t0
        # tables with work and no device of their profile up: say so once, give up after wait_s
        for job in jobs:
            if job.phase == "done" or not job.queue or job.inflight:
                continue
            if any(d.state != "offline" for d in farm.of_profile(job.profile_id)):
                continue
            now = time.monotonic()
            if job.waiting_since is None:
                job.waiting_since = now
                say(f"{job.name}: waiting: no device of profile {job.profile_id} is up ({len(job.queue)} batch(es) "
                    f"left); they run when one joins (Ctrl-C stops, nothing measured is lost)")
            elif wait_s is not None and now - job.waiting_since > wait_s:
                left = sum(len(b.ops) for b in job.queue if b.kind == "ops")
                say(f"{job.name}: gave up waiting after {wait_s:g} s: {left} op(s) left for a rerun")
                job.queue.clear()
                job.phase = "done"
        if inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.25)
        else:
            ready = []
            time.sleep(0.1)
        t0 = time.perf_counter()
        for ref in ready:
            d, job, batch = inflight.pop(ref)
            farm.busy.pop(d.device_id, None)
            job.inflight -= 1
            _settle(ray, ref, d, job, batch, farm, out, say)
        out.dispatch_s += time.perf_counter() - t0
        now = time.monotonic()
        if now - last_look > rescan_s:
            last_look = now
            farm.look()
            farm.probe_offline()
        for d in farm.answers():
            if d.profile_id in by_profile:
                say(f"{d.device_id} ({d.node}) is up: it takes batches of {os.path.basename(by_profile[d.profile_id].path)}")
        if on_progress and now - last_progress > 0.5:
            last_progress = now
            on_progress(progress_lines(jobs, farm))
    if on_progress:
        on_progress(progress_lines(jobs, farm))


def _advance(job: Job, retime: str) -> None:
    """Move a table whose queue ran dry to its next phase: its suspect rows timed again, then done."""
    if job.phase == "done" or job.queue or job.inflight:
        return
    if job.phase == "measure":
        job.retimes = pick_retimes(job.table, first_only=retime == "first") if retime != "none" else None
        if job.retimes and job.retimes.ops:
            job.enqueue(job.retimes.ops, "retime")
            job.phase = "retime"
            return
    if job.phase == "retime" and job.retimes is not None:
        job.retimes.finish(job.table, job.run)
    job.phase = "done"


def _settle(ray, ref, d: FarmDevice, job: Job, batch: Batch, farm: Farm, out: FarmRun, say) -> None:
    """Store a batch's results, or give it back (device gone) or try it elsewhere (batch failed)."""
    try:
        res = ray.get(ref)
    except Exception as e:  # noqa: BLE001 - Ray's errors for a dead node, actor or worker
        res = {LOST: f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
    if LOST in res:
        d.state, d.error = "offline", res[LOST]
        batch.lost_at = time.monotonic()
        job.queue.appendleft(batch)
        out.requeued += 1
        out.lost.append(f"{d.device_id}: {res[LOST]}")
        say(f"{d.device_id} went away ({res[LOST][:160]}); its batch of {len(batch.ops)} op(s) goes to another device")
        return
    d.state = "idle"
    if FAILED in res:
        batch.tried.append(d.device_id)
        batch.errors.append(f"{d.device_id}: {res[FAILED]}")
        others = [o for o in farm.of_profile(job.profile_id) if o.device_id not in batch.tried and o.state != "offline"]
        if others and len(batch.tried) < MAX_TRIES:
            job.queue.appendleft(batch)
            return
        out.failed_batches += 1
        error = "; ".join(batch.errors)[:900]
        for op in batch.ops:
            m = Measurement(op.key, job.profile_id, op.to_dict(), None, status="failed", error=f"batch failed: {error}")
            if batch.kind == "ops":
                store_result(job.table, m, job.run, job.resolutions)
            else:
                job.run.failures.append((op.key, m.error))
        return
    results = [Measurement.from_dict(r) for r in res["results"]]
    out.batches += 1
    out.devices[d.device_id] = out.devices.get(d.device_id, 0) + 1
    job.run.timed_s += sum(m.timed_s for m in results)
    if batch.kind == "invocation":
        if results:
            record_invocation(job.table, results[0], job.timing, fresh=True)
        return
    n = len(batch.ops)
    rows = settle_batch(job.table, job.timing, results[:n],
                        [(name, m) for (name, _), m in zip(job.comps, results[n:])])
    for m in rows:
        if batch.kind == "retime":
            job.retimes.store(job.table, m, job.run)
            continue
        if m.key in job.written:
            out.duplicates += 1
            continue
        store_result(job.table, m, job.run, job.resolutions)
        job.written.add(m.key)
        job.done_ops += 1


def progress_lines(jobs: Sequence[Job], farm: Farm) -> list[str]:
    """One line per table: ops done of those to do, ops/s, ETA, devices busy."""
    lines = []
    for j in jobs:
        devs = farm.of_profile(j.profile_id)
        busy = sum(d.device_id in farm.busy for d in devs)
        up = sum(d.state != "offline" for d in devs)
        el = time.monotonic() - j.t0
        rate = j.done_ops / el if el > 0 else 0.0
        left = j.todo - j.done_ops
        eta = f"{left / rate:.0f} s" if rate > 0 and left > 0 else ("-" if left else "0 s")
        what = {"measure": "", "retime": ", timing suspect rows again", "done": ", done"}[j.phase]
        lines.append(f"{j.name}: {j.done_ops}/{j.todo} ops, {rate:.1f} ops/s, ETA {eta}, {busy}/{up} device(s) busy"
                     f"{what}")
    return lines
