"""Once-for-All progressive shrinking: the plan of stages over epochs and one training step.

The largest net is trained first (`train_full`), then the elastic tasks are unlocked in
`elastic_order` (kernel, depth, width by default), each in phases that add one smaller choice at
a time (phase p samples among the p + 2 largest), with the trained largest net as the teacher.
The plan is written as PaddleSlim's RunConfig.n_epochs (cumulative last epoch of each phase).
At the first step of every width phase, OFA re-sorts each block's inner channels by importance
(`SuperNet.sort_channels`, Once-for-All's re_organize_middle_weights; recorded in the supernet's
`channel_sort_log`), so the narrower widths that phase unlocks keep the most important channels.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError, require
from .ofa import OFA, phase_start, search_idx

torch = require("torch", "torch")
F = torch.nn.functional

# subnets per mini-batch in each task (Once-for-All: 1 for kernel, 2 for depth and width)
DYNAMIC_BATCH = {"kernel_size": 1, "depth": 2, "width": 2, "other": 2}


@dataclass(frozen=True)
class Stage:
    """What one epoch trains: `full`, or task `task_idx` of the elastic order at `phase`."""

    name: str
    task_idx: int = -1
    phase: int = -1
    start: int = 0  # first epoch of this stage (for the per-stage learning-rate schedule)
    length: int = 1

    def to_dict(self) -> dict:
        return {"name": self.name, "task_idx": self.task_idx, "phase": self.phase}


def phases_per_task(ofa: OFA) -> list[int]:
    """Phases of each task: one per choice below the largest of its widest dimension."""
    out = []
    for task in ofa.elastic_order:
        n = max(len(a) for a, t in zip(ofa.allowed, ofa.dims.tasks) if t == task)
        out.append(max(1, n - 1))
    return out


SCHEDULES = ("equal", "ofa")
# Once-for-All's ImageNet schedule: the full net 180 epochs; each task's last phase 120 (elastic
# kernel's only phase; depth {3,4} -> {2,3,4} and expand {4,6} -> {3,4,6}: 25 then 120)
OFA_FULL, OFA_LAST_PHASE, OFA_EARLY_PHASE = 180, 120, 25


def plan_epochs(ofa: OFA, epochs: int, full_fraction: float = 0.3,
                schedule: str = "equal") -> tuple[int, list[list[int]]]:
    """(epochs of the full net, n_epochs for the rest). `equal`: `full_fraction` for the full net,
    each phase an equal share of the rest (the remainder to the last phases); `ofa`: Once-for-All's
    proportions (full 180 : each task's last phase 120 : an earlier phase 25), every stage >= 1."""
    if schedule not in SCHEDULES:
        raise UsageError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    phases = phases_per_task(ofa)
    n_phases = sum(phases)
    if epochs < n_phases + 1:
        raise UsageError(f"progressive shrinking over {ofa.elastic_order} needs at least {n_phases + 1} epochs "
                         f"(1 full + {n_phases} phases), got {epochs}")
    if schedule == "ofa":
        weights = [OFA_FULL] + [OFA_LAST_PHASE if j == p - 1 else OFA_EARLY_PHASE for p in phases for j in range(p)]
        shares = _apportion(epochs, weights)
        full, lengths = shares[0], shares[1:]
    else:
        full = max(1, min(int(round(epochs * full_fraction)), epochs - n_phases))
        rest = epochs - full
        lengths = [rest // n_phases] * n_phases
        for i in range(rest - sum(lengths)):
            lengths[-1 - i] += 1
    n_epochs, at, k = [], -1, 0
    for p in phases:
        cum = []
        for _ in range(p):
            at += lengths[k]
            k += 1
            cum.append(at)
        n_epochs.append(cum)
    return full, n_epochs


def _apportion(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights`, every part >= 1 (largest remainders first)."""
    raw = [total * w / sum(weights) for w in weights]
    parts = [max(1, int(r)) for r in raw]
    while sum(parts) > total:  # the floors of 1 overshot: take from the largest parts
        parts[parts.index(max(parts))] -= 1
    order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    for i in order[:total - sum(parts)]:
        parts[i] += 1
    return parts


def stage_of(epoch: int, full: int, n_epochs: list[list[int]], order: list[str]) -> Stage:
    """The stage an epoch belongs to (PaddleSlim's search_idx after the full-net epochs)."""
    if epoch < full:
        return Stage("full", start=0, length=full)
    t, p = search_idx(epoch - full, n_epochs)
    start = phase_start(n_epochs, t, p)
    return Stage(order[t], t, p, full + start, n_epochs[t][p] - start + 1)


def ofa_step(ofa: OFA, x, y, n_subnets: int, label_smoothing: float = 0.1) -> float:
    """n_subnets sampled subnets, each: cross-entropy + the OFA distillation loss, backward."""
    total = 0.0
    for _ in range(max(1, n_subnets)):
        out, _teacher = ofa(x)
        loss = F.cross_entropy(out, y, label_smoothing=label_smoothing) + ofa.calc_distill_loss()
        loss.backward()
        total += float(loss.detach())
    return total / max(1, n_subnets)


__all__ = ["Stage", "plan_epochs", "SCHEDULES", "stage_of", "phases_per_task", "ofa_step", "DYNAMIC_BATCH"]
