"""What a latency table covers: the spaces and input resolutions it was made for, and the keys
that hold one value per resolution.

Once-for-All keeps one YAML file per resolution, and a key whose input does not depend on the
resolution (`Conv_2`, `Logits` on a 1x1 input, blocks that reach 7x7 from 208 and 224) has a
number in each file. Such a row keeps them all in extra["by_resolution"] =
{"176": {"estimate", "mean", "count", "std", "source"}, ...}; its own columns hold the lowest
resolution's entry, so that the order of the imported files changes nothing. A row whose
entries agree has no by_resolution: its one value holds at every resolution it lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

BY_RESOLUTION = "by_resolution"
_LEGACY = "ofa_by_resolution"  # before: the first file's entry in the row, differing ones here
SPACE_META = "space"  # {"name": ..., "how": ...}: the space an imported table belongs to


def row_values(row: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """{resolution: entry} of a row holding one value per resolution; {} for a row with one value."""
    extra = row.get("extra") or {}
    if extra.get(BY_RESOLUTION):
        return {int(r): dict(e) for r, e in extra[BY_RESOLUTION].items()}
    legacy = extra.get(_LEGACY)
    if not legacy:
        return {}
    own = {"estimate": row["estimate"], "mean": row.get("mean"), "count": row.get("n"), "std": row.get("std")}
    out = {}
    for r in extra.get("resolutions") or ():
        e = legacy.get(str(r))
        out[int(r)] = own if e is None else {"estimate": e["mean"], "mean": e["mean"],
                                             "count": e.get("count"), "std": e.get("std")}
    return out


def table_values(table, field: str = "estimate") -> dict[str, dict[int, float | None]]:
    """key -> {resolution: its entry's `field` (the estimate, or a statistic such as the mean;
    None where the entry lacks it)} of every ok row holding one value per resolution."""
    out: dict[str, dict[int, float | None]] = {}
    for row in table.rows(status="ok", columns=("estimate", "mean", "n", "std", "extra"),
                          extra_keys=(BY_RESOLUTION, _LEGACY)):
        vals = row_values(row)
        if vals:
            out[row["key"]] = {r: None if e.get(field) is None else float(e[field]) for r, e in vals.items()}
    return out


def table_resolutions(table) -> tuple[int, ...]:
    """Every resolution the table's ok rows list in extra["resolutions"], ascending."""
    return tuple(sorted(int(v) for v in table.extra_values("resolutions")))


def table_spaces(table) -> tuple[str, ...]:
    """The spaces the table records: profiled from (meta profile_run) or imported for (meta space)."""
    run = table.run_settings
    names = set(run.spaces if run else ())
    own = table.meta_get(SPACE_META)
    if own and own.get("name"):
        names.add(own["name"])
    return tuple(sorted(names))


@dataclass(frozen=True)
class Coverage:
    """Where a predictor's numbers come from, for messages: the table, its spaces, its resolutions."""

    path: str
    spaces: tuple[str, ...] = ()
    resolutions: tuple[int, ...] = ()
    profile: Any = None  # the table's DeviceProfile: the device a model is lowered for (price_model)

    @classmethod
    def of(cls, table) -> "Coverage":
        return cls(str(table.path), table_spaces(table), table_resolutions(table), table.profile)

    def describe(self) -> str:
        what = ", ".join(self.spaces) or "no recorded space"
        at = f" at {', '.join(map(str, self.resolutions))}" if self.resolutions else ""
        return f"table covers {what}{at}"


__all__ = ["BY_RESOLUTION", "SPACE_META", "Coverage", "row_values", "table_values", "table_resolutions",
           "table_spaces"]
