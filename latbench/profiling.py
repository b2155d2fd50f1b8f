"""Drive an agent over a list of ops into a latency table: resumable, committed op by op.

Every Measurement is written in its own transaction as the agent hands it over. Ops an agent
times together (interleaved rounds, 24 by default; a phone's push-and-run batch) are handed over
together when their batch ends, so a crash, Ctrl-C or reboot loses at most that batch in flight;
a rerun skips every key already stored for the table's profile (and counts those stored failed:
ProfileRun.failed_earlier). Each batch also times the companion ops of latbench.runmeta (the
runtime's per-call cost, the reference kernel); after the run the rows taken in a slow spell
(latbench.suspect) are timed once more (`retime_suspects`). The public entry point that picks
the ops and the timing is latbench.profiler.profile.
"""
from __future__ import annotations

import dataclasses
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

from .errors import UsageError
from .measure import Measurement, TimingSettings
from .ops import OpSpec, unique
from .runmeta import (INVOCATION_META, INVOCATION_OP, REFERENCE_META, REFERENCE_OP, record_invocation,
                      record_reference, timing_words)
from .tablemeta import CompanionEntry

ORDER_SEED = 0  # ops are measured in a seeded shuffled order: two runs of one command alike


@dataclass
class ProfileRun:
    """What one profiling run did (the table holds the numbers)."""

    total: int = 0  # unique ops asked for
    skipped: int = 0  # already in the table
    measured: int = 0  # measured now (ok)
    failed: int = 0  # measured now but failed
    failed_earlier: int = 0  # of the skipped: stored as failed by an earlier run, not retried
    remaining: int = 0  # not reached (max_ops or interruption)
    interrupted: bool = False
    wall_s: float = 0.0
    timed_s: float = 0.0  # inside the timed loops
    failures: list[tuple[str, str]] = field(default_factory=list)
    retimed: int = 0  # rows timed again because they looked taken in a slow spell
    unstable: int = 0  # of those, still suspect after it (latbench.suspect)
    # filled by `profile` (the library entry point): where and how the run timed
    table: str = ""
    device: str = ""
    profile_id: str = ""
    timing: TimingSettings | None = None
    estimator: str | None = None  # what rows are priced by, where latbench's loop timed them
    invocation: CompanionEntry | None = None  # the table's per-call cost after the run (or why it failed)

    @property
    def overhead(self) -> float:
        """Share of wall time spent outside the timed loops (building models, I/O)."""
        return 1.0 - self.timed_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        """Every op asked for is stored ok: nothing failed (now or earlier), nothing left, no interruption."""
        return not (self.failed or self.failed_earlier or self.remaining or self.interrupted)

    def words(self) -> str:
        """How the entries were timed, in a few words (timing_words)."""
        return timing_words(self.timing, self.invocation) if self.timing else ""

    def to_dict(self) -> dict:
        """The run as plain data (`latbench profile --json`)."""
        t, inv = self.timing, self.invocation
        ok = inv if inv and inv.estimate_ms is not None else None
        return {
            "table": self.table, "profile_id": self.profile_id, "device": self.device, "total": self.total,
            "skipped": self.skipped, "measured": self.measured, "failed": self.failed,
            "failed_earlier": self.failed_earlier, "remaining": self.remaining, "interrupted": self.interrupted,
            "retimed": self.retimed, "unstable": self.unstable,
            "wall_s": round(self.wall_s, 3), "overhead": round(self.overhead, 4),
            "estimator": self.estimator, "context": t.context if t else None,
            "context_bytes": t.context_bytes if t else None, "rounds": t.rounds if t else None,
            "interleave": t.interleave if t else None,
            "invocation_ms": ok.estimate_ms if ok else None,
            "invocation_error": None if ok or not inv else inv.error,
            "failures": [{"key": k, "error": e} for k, e in self.failures],
        }


def measure_order(ops: Sequence[OpSpec], seed: int = ORDER_SEED) -> list[OpSpec]:
    """`ops` in a seeded shuffled order. Enumeration order groups one resolution's blocks together,
    so a slow minute of the machine would skew one resolution's entries alike (+10% at 176 and 192
    in one ort table here); shuffled, it spreads over every resolution as per-op noise."""
    out = list(ops)
    random.Random(seed).shuffle(out)
    return out


def check_max_ops(max_ops: int | None) -> None:
    """A cap on new ops is at least one op (None: no cap)."""
    if max_ops is not None and max_ops < 1:
        raise UsageError(f"`max_ops` must be >= 1 (leave it out to measure every op), got {max_ops}")


RETIME = ("first", "all", "none")  # profile_into: which suspect rows to time again


def profile_into(table, agent, ops: Iterable[OpSpec], timing: TimingSettings = TimingSettings(),
                 max_ops: int | None = None, retry_failed: bool = False, shuffle: bool = True,
                 resolutions: dict[str, list[int]] | None = None, sample_invocation: bool = True,
                 retime: str = "first", on_start: Callable[[int], None] | None = None,
                 on_op: Callable[[OpSpec], None] | None = None,
                 on_result: Callable[[Measurement], None] | None = None,
                 on_retime: Callable[[int], None] | None = None) -> ProfileRun:
    """Measure the ops missing from `table` with `agent`, committing each as it arrives. `max_ops`
    takes the first ops in enumeration order; they are measured in `measure_order` unless not `shuffle`.
    Where the agent times ops in batches (interleaved rounds; a phone's push-and-run), each batch
    also times INVOCATION_OP into the table's per-call cost (`record_invocation`) and REFERENCE_OP
    into its meta "reference", unless not `sample_invocation`. Then the table's suspect rows are
    timed again (`retime_suspects`; `on_retime(n)` first): `retime` "first" those never timed
    again (a profile's own pass, once per row), "all" every one, "none" none."""
    check_max_ops(max_ops)
    if retime not in RETIME:
        raise UsageError(f"`retime` must be one of {', '.join(RETIME)}, got {retime!r}")
    t0 = time.perf_counter()
    run, todo = plan_todo(table, ops, max_ops, retry_failed, shuffle, resolutions)
    if on_start:
        on_start(len(todo))
    try:
        for m in timed_batches(table, agent, todo, timing, run, sample_invocation, on_op):
            store_result(table, m, run, resolutions)
            if on_result:
                on_result(m)
        if retime != "none":
            retime_suspects(table, agent, timing, run, first_only=retime == "first", on_start=on_retime,
                            on_op=on_op, on_result=on_result)
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        run.wall_s = time.perf_counter() - t0
        run.remaining = run.total - run.skipped - run.measured - run.failed
    return run


def plan_todo(table, ops: Iterable[OpSpec], max_ops: int | None = None, retry_failed: bool = False,
              shuffle: bool = True, resolutions: dict[str, list[int]] | None = None) -> tuple[ProfileRun, list[OpSpec]]:
    """(a ProfileRun counting what `table` holds of `ops` already, the ops still to measure):
    keys stored are skipped (those stored failed too, unless `retry_failed`); `max_ops` takes the
    first of the rest in enumeration order; they come in `measure_order` unless not `shuffle`.
    A skipped key this run's `resolutions` use gets them added to its row's extra["resolutions"]
    (a key shared by a resolution profiled earlier belongs to this one's OFA YAML file too)."""
    todo_all = unique(ops)
    stored_ok = table.keys(status="ok")
    stored_any = table.keys(status=None)
    skip = stored_ok if retry_failed else stored_any
    todo = [op for op in todo_all if op.key not in skip]
    stamps = {op.key: resolutions[op.key] for op in todo_all if op.key in skip and op.key in resolutions} \
        if resolutions else {}
    if stamps:  # no write transaction on a fresh table
        table.merge_extra_lists("resolutions", stamps)
    run = ProfileRun(total=len(todo_all), skipped=len(todo_all) - len(todo),
                     failed_earlier=sum(op.key in skip and op.key not in stored_ok for op in todo_all))
    if max_ops is not None:
        todo = todo[:max_ops]
    return run, measure_order(todo) if shuffle else todo


def store_result(table, m: Measurement, run: ProfileRun, resolutions: dict[str, list[int]] | None = None) -> None:
    """Commit one op's measurement (with the resolutions using it) and count it in `run`."""
    if resolutions and m.key in resolutions:
        m = dataclasses.replace(m, extra={**m.extra, "resolutions": resolutions[m.key]})
    # benchmark_model reports a mean and no median: the row says which estimate it holds
    table.add(m, estimator=m.settings.get("estimator", "median"))
    if m.ok:
        run.measured += 1
    else:
        run.failed += 1
        run.failures.append((m.key, m.error))


COMPANIONS = ((INVOCATION_META, INVOCATION_OP), (REFERENCE_META, REFERENCE_OP))


def companions(batch_len: int, on: bool = True) -> tuple[tuple[str, OpSpec], ...]:
    """The companion ops (meta name, op) a batch of `batch_len` ops ends with: the per-call cost
    where a batch holds two or more, the reference kernel where three or more; none unless `on`."""
    return COMPANIONS[:max(0, min(2, batch_len - 1))] if on else ()


def settle_batch(table, timing: TimingSettings, rows: Sequence[Measurement],
                 comps: Sequence[tuple[str, Measurement]]) -> list[Measurement]:
    """Record one batch's companion measurements (meta name, Measurement) into the table's meta
    and return its rows, each with the batch's reference estimate as extra["reference_ms"]."""
    ref: float | None = None
    for name, m in comps:
        if name == INVOCATION_META:
            record_invocation(table, m, timing)
        else:
            ref = record_reference(table, m, timing)
    return [r if ref is None else dataclasses.replace(r, extra={**r.extra, "reference_ms": ref}) for r in rows]


def timed_batches(table, agent, ops: Sequence[OpSpec], timing: TimingSettings, run: ProfileRun,
                  companions_on: bool = True, on_op: Callable[[OpSpec], None] | None = None) -> Iterator[Measurement]:
    """`agent`'s measurements of `ops`, in order. Where the agent times in batches (and
    `companions`), each batch also times INVOCATION_OP and REFERENCE_OP (the latter where a batch
    holds three or more), recorded into the table's meta; the batch's rows are handed over when
    its companions are in, each with the batch's reference estimate as extra["reference_ms"].
    Every measurement's timed seconds are added to `run`."""
    comps = companions(agent.batch_len(timing), companions_on)
    per_batch = agent.batch_len(timing) - len(comps)
    tags: deque[str] = deque()  # per op fed, in order: "" or the companion's meta name

    def feed():
        for i, op in enumerate(ops):
            if on_op:
                on_op(op)
            tags.append("")
            yield op
            if comps and (i % per_batch == per_batch - 1 or i == len(ops) - 1):
                for name, comp in comps:
                    tags.append(name)
                    yield comp

    pending: list[Measurement] = []
    got: list[tuple[str, Measurement]] = []
    for m in agent.measure(feed(), timing):
        run.timed_s += m.timed_s
        tag = tags.popleft()
        if not tag:
            if not comps:
                yield m
            else:
                pending.append(m)
            continue
        got.append((tag, m))
        if tag == comps[-1][0]:  # the batch's last companion: its rows go out
            yield from settle_batch(table, timing, pending, got)
            pending, got = [], []


@dataclass
class Retimes:
    """A table's suspect rows picked to be timed again (`pick_retimes`): their ops in measure
    order, and each row as stored with the signs that made it suspect."""

    ops: list[OpSpec]
    rows: dict[str, dict]
    signs: dict[str, tuple]
    done: list[str] = field(default_factory=list)  # keys re-timed and stored

    def store(self, table, m: Measurement, run: ProfileRun) -> bool:
        """Store the re-timing `m` of a row in place of its take, which is kept with its signs in
        extra["earlier"]; a failed re-timing leaves the take and is listed in `run.failures`.
        True when stored."""
        from .suspect import EARLIER, take_of

        if not m.ok:
            run.failures.append((m.key, f"timed again, failed: {m.error} (the first take is kept)"))
            return False
        first = self.rows[m.key]
        keep = {k: first["extra"][k] for k in ("resolutions",) if k in first["extra"]}
        earlier = [*first["extra"].get(EARLIER, ()), take_of(first, self.signs[m.key])]
        table.add(dataclasses.replace(m, extra={**m.extra, **keep, EARLIER: earlier}),
                  estimator=m.settings.get("estimator", "median"))
        self.done.append(m.key)
        run.retimed += 1
        return True

    def finish(self, table, run: ProfileRun) -> ProfileRun:
        """Count the re-timed rows still suspect (`unstable`)."""
        from .suspect import suspects

        run.unstable += len(suspects(table, self.done))
        return run


def pick_retimes(table, first_only: bool = False) -> Retimes:
    """The table's suspect rows (latbench.suspect) to time again; `first_only`: those never timed
    again, so a profile does it once per row."""
    from .suspect import suspects

    found = [x for x in suspects(table) if not (first_only and x.retimed)]
    rows = {x.key: table.row(x.key) for x in found}
    return Retimes(measure_order([OpSpec.from_dict(rows[x.key]["op"]) for x in found]), rows,
                   {x.key: x.signs for x in found})


def retime_suspects(table, agent, timing: TimingSettings, run: ProfileRun, first_only: bool = False,
                    on_start: Callable[[int], None] | None = None,
                    on_op: Callable[[OpSpec], None] | None = None,
                    on_result: Callable[[Measurement], None] | None = None) -> ProfileRun:
    """Time the table's suspect rows again (`pick_retimes`) in batches as `profile_into` times
    them, committing each batch's rows as they come (Retimes.store). `run` counts the rows
    re-timed, and those still suspect (`unstable`)."""
    picked = pick_retimes(table, first_only)
    if on_start:
        on_start(len(picked.ops))
    if not picked.ops:
        return run
    for m in timed_batches(table, agent, picked.ops, timing, run, True, on_op):
        if picked.store(table, m, run) and on_result:
            on_result(m)
    return picked.finish(table, run)
