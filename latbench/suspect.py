"""Rows taken in a slow spell of the machine: which, and why. A profile times them again before it
ends (latbench.profiling.retime_suspects), `latbench table check` lists them.

Three signs, their limits in latbench.measure (chosen from data, see docs/measurement.md): the
row's estimate far above its fastest round's median, its rounds' medians far apart (both on the
row's own numbers, Stats.spell_signs), and the reference kernel timed in its batch far slower than
that kernel's median over the whole profile (rows record it as extra["reference_ms"]). A row that
was timed again (extra["earlier"] keeps each earlier take, with its signs) and still shows a sign
is `unstable`: its number is as uncertain as the machine was.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable

from .measure import LIMIT_REFERENCE, LOOP_ESTIMATORS, SpellSign, Stats

EARLIER = "earlier"  # extra: the takes a re-timed row replaced, oldest first


@dataclass(frozen=True)
class Suspect:
    """One ok row that shows a slow spell's signs; `retimed`: how often it was timed again."""

    key: str
    signs: tuple[SpellSign, ...]
    retimed: int = 0

    @property
    def unstable(self) -> bool:
        """Timed again and still suspect."""
        return self.retimed > 0

    def text(self) -> str:
        again = f"; unstable: still so after {self.retimed} re-timing(s)" if self.retimed else ""
        return f"{self.key}: {'; '.join(s.text() for s in self.signs)}{again}"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "signs": [s.to_dict() for s in self.signs], "retimed": self.retimed,
                "unstable": self.unstable}


def reference_median(table) -> float | None:
    """The reference kernel's median estimate over every batch of the table's profile (meta
    "reference"), None where none was timed."""
    entry = table.reference
    ok = [x.estimate_ms for x in entry.samples if x.estimate_ms is not None] if entry else []
    return float(statistics.median(ok)) if ok else None


def row_signs(estimator: str, median: float | None, mean: float | None, low: float | None,
              extra: dict[str, Any], ref_median: float | None) -> tuple[SpellSign, ...]:
    """The signs one row shows: its own numbers' (Stats.spell_signs, for its estimator) and its
    batch's reference against `ref_median`."""
    nan = math.nan
    st = Stats(median=nan if median is None else median, p25=nan, p75=nan, min=nan if low is None else low,
               max=nan, mean=nan if mean is None else mean, std=nan, n=0,
               rounds=tuple(extra.get("round_medians") or ()))
    signs = list(st.spell_signs(estimator if estimator in LOOP_ESTIMATORS else "median"))
    ref = extra.get("reference_ms")
    if ref is not None and ref_median:
        ratio = ref / ref_median
        if ratio > LIMIT_REFERENCE:
            signs.append(SpellSign("reference", ratio, LIMIT_REFERENCE))
    return tuple(signs)


def suspects(table, keys: Iterable[str] | None = None) -> list[Suspect]:
    """The table's ok rows (of `keys`, if given) that show a sign, by key."""
    want = None if keys is None else set(keys)
    ref = reference_median(table)
    out = []
    for r in table.rows(status="ok", columns=("estimator", "median", "mean", "min", "extra")):
        if want is not None and r["key"] not in want:
            continue
        extra = r["extra"] or {}
        signs = row_signs(r["estimator"], r["median"], r["mean"], r["min"], extra, ref)
        if signs:
            out.append(Suspect(r["key"], signs, len(extra.get(EARLIER) or ())))
    return out


def take_of(row: dict[str, Any], signs: Iterable[SpellSign]) -> dict[str, Any]:
    """The numbers of a row's take, kept in extra["earlier"] when the row is timed again."""
    extra = row.get("extra") or {}
    return {"taken_at": row["taken_at"], "estimator": row["estimator"], "estimate": row["estimate"],
            **{k: row[k] for k in ("median", "mean", "min", "max", "std", "n")},
            "round_medians": extra.get("round_medians"), "reference_ms": extra.get("reference_ms"),
            "signs": [s.to_dict() for s in signs]}


__all__ = ["EARLIER", "Suspect", "reference_median", "row_signs", "suspects", "take_of"]
