"""Drive an agent over a list of ops into a latency table: resumable, committed op by op.

Every Measurement is written in its own transaction as it arrives, so a crash, Ctrl-C or reboot
loses at most the op in flight; a rerun skips every key already stored for the table's profile.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from .measure import Measurement, TimingSettings
from .ops import OpSpec, unique


@dataclass
class ProfileRun:
    """What one profiling run did (the table holds the numbers)."""

    total: int = 0  # unique ops asked for
    skipped: int = 0  # already in the table
    measured: int = 0  # measured now (ok)
    failed: int = 0  # measured now but failed
    remaining: int = 0  # not reached (max_ops or interruption)
    interrupted: bool = False
    wall_s: float = 0.0
    timed_s: float = 0.0  # inside the timed loops
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def overhead(self) -> float:
        """Share of wall time spent outside the timed loops (building models, I/O)."""
        return 1.0 - self.timed_s / self.wall_s if self.wall_s > 0 else 0.0


def ops_with_resolutions(space, resolutions: Sequence[int] | None, granularity: str,
                         fusion: str = "none") -> tuple[list[OpSpec], dict[str, list[int]]]:
    """Unique ops of a space (blocks, or their ops as `fusion`'s runtime runs them) and, for each
    key, the resolutions whose subnets use it."""
    from .ops import expand, fuse

    res = space.check_resolutions(resolutions)
    by_key: dict[str, list[int]] = {}
    found: dict[str, OpSpec] = {}
    for r in res or (None,):
        for block in space.enumerate_blocks([r] if r is not None else None):
            lowered = [block] if granularity == "block" else fuse(expand(block), fusion)
            for op in lowered:
                if op.key not in found:
                    found[op.key] = op
                if r is not None:
                    rs = by_key.setdefault(op.key, [])
                    if not rs or rs[-1] != r:
                        rs.append(r)
    return list(found.values()), by_key


def profile_into(table, agent, ops: Iterable[OpSpec], timing: TimingSettings = TimingSettings(),
                 max_ops: int | None = None, retry_failed: bool = False,
                 resolutions: dict[str, list[int]] | None = None,
                 on_start: Callable[[int], None] | None = None,
                 on_op: Callable[[OpSpec], None] | None = None,
                 on_result: Callable[[Measurement], None] | None = None) -> ProfileRun:
    """Measure the ops missing from `table` with `agent`, committing each as it arrives."""
    t0 = time.perf_counter()
    todo_all = unique(ops)
    stored_ok = table.keys(status="ok")
    stored_any = table.keys(status=None)
    skip = stored_ok if retry_failed else stored_any
    todo = [op for op in todo_all if op.key not in skip]
    run = ProfileRun(total=len(todo_all), skipped=len(todo_all) - len(todo))
    if max_ops is not None:
        todo = todo[:max_ops]
    if on_start:
        on_start(len(todo))
    todo_iter = iter(todo)

    def feed():
        for op in todo_iter:
            if on_op:
                on_op(op)
            yield op

    try:
        for m in agent.measure(feed(), timing):
            if resolutions and m.key in resolutions:
                m = dataclasses.replace(m, extra={**m.extra, "resolutions": resolutions[m.key]})
            # benchmark_model reports a mean and no median: the row says which estimate it holds
            table.add(m, estimator=m.settings.get("estimator", "median"))
            run.timed_s += m.timed_s
            if m.ok:
                run.measured += 1
            else:
                run.failed += 1
                run.failures.append((m.key, m.error))
            if on_result:
                on_result(m)
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        run.wall_s = time.perf_counter() - t0
        run.remaining = run.total - run.skipped - run.measured - run.failed
    return run
