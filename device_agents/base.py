"""Agent: runs ops on one device and yields one Measurement per op as each finishes.

Local agents only implement `fingerprint`, `prepare` (build a runnable for an op) and `run` (one
inference for the conformance suite); the timing loop is latbench.measure's, shared by all.
"""
from __future__ import annotations

import time
import traceback
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from latbench.device import DeviceProfile
from latbench.errors import LatbenchError
from latbench.measure import Measurement, TimingSettings, time_callable
from latbench.ops import OpSpec

from .weights import op_weights


class Agent:
    """Base class of every agent. Agents hold no global state: several may run side by side."""

    name: str = ""
    granularities = ("op", "block")
    fusion: str = "none"  # which op patterns the runtime runs as one kernel (latbench.ops.FUSIONS)

    def __init__(self, threads: int = 1, seed: int = 0, **options: Any):
        self.threads = int(threads)
        self.seed = seed
        self.options = options
        self._profile: DeviceProfile | None = None

    # ---------------------------------------------------------------- to implement
    def fingerprint(self) -> DeviceProfile:  # pragma: no cover - abstract
        raise LatbenchError(f"agent {self.name} defines no fingerprint")

    def prepare(self, op: OpSpec) -> Callable[[], Any]:  # pragma: no cover - abstract
        """A zero-argument callable that runs `op` once on prepared inputs."""
        raise LatbenchError(f"agent {self.name} cannot prepare ops")

    def run(self, op: OpSpec, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """One inference of `op` on the NCHW float32 input `x`, output in NCHW (conformance)."""
        raise LatbenchError(f"agent {self.name} cannot run ops")

    def synchronizer(self) -> Callable[[], Any] | None:
        """Run before each clock read (e.g. torch.cuda.synchronize) so queued device work is timed."""
        return None

    # ---------------------------------------------------------------- shared
    @property
    def profile(self) -> DeviceProfile:
        if self._profile is None:
            self._profile = self.fingerprint()
        return self._profile

    def weights(self, op: OpSpec):
        return op_weights(op, self.seed)

    def settings(self) -> dict[str, Any]:
        """Per-measurement settings recorded with each number (beyond the profile)."""
        p = self.profile
        return {"agent": self.name, "runtime": p.runtime, "runtime_version": p.runtime_version,
                "threads": p.threads, "delegate": p.delegate, **dict(p.options)}

    def measure(self, ops: Iterable[OpSpec], timing: TimingSettings = TimingSettings()) -> Iterator[Measurement]:
        """Time each op; a failing op yields a 'failed' Measurement and the run goes on."""
        profile_id = self.profile.id
        settings = {**self.settings(), "timing": timing.to_dict()}
        for op in ops:
            t0 = time.perf_counter()
            try:
                fn = self.prepare(op)
                t1 = time.perf_counter()
                stats = time_callable(fn, timing, sync=self.synchronizer())
                t2 = time.perf_counter()
            except Exception as e:  # the op is reported, the run goes on
                yield Measurement(key=op.key, profile_id=profile_id, op=op.to_dict(), stats=None,
                                  settings=settings, status="failed", error=_one_line(e),
                                  wall_s=time.perf_counter() - t0)
                continue
            yield Measurement(key=op.key, profile_id=profile_id, op=op.to_dict(), stats=stats,
                              settings=settings, wall_s=t2 - t0, timed_s=t2 - t1)

    def close(self) -> None:
        """Release runtime resources (sessions, interpreters, device connections)."""


def _one_line(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
    if len(msg) > 500:
        msg = msg[:500] + "..."
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    return msg + where
