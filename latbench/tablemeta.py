"""Typed table metadata: what a latency table's meta entries hold, as frozen dataclasses.

A table's meta entries are JSON objects (`LatencyTable.meta_get` still reads them raw); these
classes give them types, one place that reads them and one that writes them:

- RunSettings, meta "profile_run": how a profile timed the rows (granularity, fusion, spaces,
  cache context, estimator); one table holds one.
- CompanionEntry, meta "invocation" (the runtime's per-call cost) and "reference" (the reference
  kernel timed in every batch): one sample per batch, the estimate their statistic.
- CalibrationEntry, one entry of meta "calibration", keyed "SPACE/GRANULARITY".

A field absent from the stored object reads as None (and is left out again when written); entries
this latbench does not know, and known ones stored as null, are kept in `other`, so a round trip
gives the stored object back as it was. `migrate_meta`
upgrades the meta of a table written by an older latbench (format version 1) to this one's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, TypeVar

from .errors import LatbenchError, TableError
from .measure import TimingSettings

RUN_META = "profile_run"
INVOCATION_META = "invocation"
REFERENCE_META = "reference"
CALIBRATION_META = "calibration"

R = TypeVar("R", bound="_Record")


class _Record:
    """from_dict / to_dict of a frozen dataclass stored as one JSON object (see the module docstring).
    `_load` / `_dump` convert the fields whose JSON form differs from their type."""

    _load: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    _dump: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}

    @classmethod
    def from_dict(cls: type[R], d: Any, where: str = "") -> R:
        """The record stored as `d`; a wrong shape is a TableError naming `where` (file and entry)."""
        what = where or cls.__name__
        if not isinstance(d, Mapping):
            raise TableError(f"{what}: must be a JSON object, got {d!r:.60}")
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name == "other":
                continue
            if f.name not in d:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise TableError(f"{what}: has no {f.name}")
                continue
            v = d[f.name]
            try:
                kw[f.name] = v if v is None or f.name not in cls._load else cls._load[f.name](v)
            except (LatbenchError, TypeError, ValueError, KeyError) as e:
                raise TableError(f"{what}: {f.name} {v!r:.60} cannot be read ({e})") from None
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kw["other"] = {k: v for k, v in d.items() if k not in known or v is None}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object this record is stored as (None fields left out)."""
        out = dict(getattr(self, "other"))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.name == "other" or v is None:
                continue
            out[f.name] = self._dump[f.name](v) if f.name in self._dump else v
        return out


def _floats(xs: Any) -> tuple[float, ...]:
    return tuple(float(x) for x in xs)


def _strings(xs: Any) -> tuple[str, ...]:
    if isinstance(xs, str) or not all(isinstance(x, str) for x in xs):
        raise TypeError("must be a list of strings")
    return tuple(xs)


def _mapping(d: Any) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise TypeError("must be a JSON object")
    return dict(d)


def _timing(d: Any) -> TimingSettings:
    return TimingSettings.from_dict(_mapping(d))


def _timing_dict(t: TimingSettings) -> dict[str, Any]:
    return t.to_dict()


@dataclass(frozen=True)
class RunSettings(_Record):
    """How a profile timed a table's rows (meta "profile_run"); a run asking for other settings is
    refused (latbench.runmeta.check_run_meta). None: not recorded (`estimator` where the agent
    times with its own runner; `context` in a combination of tables timed in different ones)."""

    granularity: str  # op | block
    fusion: str = "none"  # op granularity: how ops are fused as the runtime runs them
    spaces: tuple[str, ...] = ()  # the spaces profiled into the table
    context: str | None = None  # cache context: warm | network
    context_bytes: int | None = None  # network context: bytes read before each timed call
    estimator: str | None = None  # the statistic timed rows are priced by (mean, median, round_min)
    other: Mapping[str, Any] = field(default_factory=dict)

    _load = {"spaces": _strings, "context_bytes": int, "fusion": str, "granularity": str}
    _dump = {"spaces": list}


@dataclass(frozen=True)
class CompanionSample(_Record):
    """One batch's measurement of a companion op (per-call cost, reference kernel)."""

    estimate_ms: float | None = None  # None: the measurement failed
    status: str | None = None
    error: str | None = None
    taken_at: float | None = None
    round_medians: tuple[float, ...] | None = None
    stats: Mapping[str, Any] | None = None  # median, p25, p75, min, max, mean, std, n, block
    below_resolution_us: float | None = None  # benchmark_model read 0 whole microseconds: a bound
    estimator: str | None = None  # tables from before the entry recorded it
    other: Mapping[str, Any] = field(default_factory=dict)

    _load = {"estimate_ms": float, "round_medians": _floats, "stats": _mapping}
    _dump = {"round_medians": list}


def _samples(xs: Any) -> tuple[CompanionSample, ...]:
    return tuple(CompanionSample.from_dict(x, f"sample {i}") for i, x in enumerate(xs))


def _sample_dicts(xs: tuple[CompanionSample, ...]) -> list[dict[str, Any]]:
    return [x.to_dict() for x in xs]


@dataclass(frozen=True)
class CompanionEntry(_Record):
    """A companion op timed in every batch (meta "invocation": the runtime's per-call cost, which
    prediction takes off each entry and adds once; meta "reference": the reference kernel that
    tells a slow spell): its samples, one per batch, and their statistic `estimate_ms`."""

    estimate_ms: float | None = None  # None: no batch measured it
    status: str | None = None  # ok | failed
    error: str | None = None
    estimator: str | None = None  # the statistic of the samples (the table's)
    combine: str | None = None  # how the samples are combined, in words
    key: str | None = None  # the op's key
    op: Mapping[str, Any] | None = None
    timing: TimingSettings | None = None
    profile_id: str | None = None
    taken_at: float | None = None
    samples: tuple[CompanionSample, ...] = ()
    other: Mapping[str, Any] = field(default_factory=dict)

    _load = {"estimate_ms": float, "op": _mapping, "timing": _timing, "samples": _samples}
    _dump = {"timing": _timing_dict, "samples": _sample_dicts}


@dataclass(frozen=True)
class CalibrationEntry(_Record):
    """A calibration fitted on measured subnets (one entry of meta "calibration", keyed
    "SPACE/GRANULARITY"): measured ~= scale * predicted + offset_ms, and the record of its fit."""

    scale: float = 1.0
    offset_ms: float = 0.0
    n: int = 0  # subnets fitted on
    space: str = ""
    granularity: str = ""
    form: str = "scale+offset"  # which were fitted: offset, scale or scale+offset
    profile_id: str | None = None
    taken_at: float | None = None
    seed: int | None = None
    resolutions: tuple[int, ...] | None = None
    in_sample: Mapping[str, Any] | None = None  # error metrics, calibrated
    uncalibrated: Mapping[str, Any] | None = None  # error metrics before it
    yardstick: Mapping[str, Any] | None = None  # the yardstick's settings
    other: Mapping[str, Any] = field(default_factory=dict)

    _load = {"scale": float, "offset_ms": float, "n": int, "seed": int,
             "resolutions": lambda xs: tuple(int(x) for x in xs), "in_sample": _mapping,
             "uncalibrated": _mapping, "yardstick": _mapping}
    _dump = {"resolutions": list}

    @property
    def key(self) -> str:
        """Where the table's meta "calibration" keeps it."""
        return calibration_key(self.space, self.granularity)

    def apply(self, ms):
        """The calibrated price of `ms` (a number or an array)."""
        return self.scale * ms + self.offset_ms


def calibration_key(space: Any, granularity: str) -> str:
    """The key of a space's calibration at `granularity` ("SPACE/GRANULARITY"); `space` is a name
    or a space object."""
    return f"{getattr(space, 'name', space)}/{granularity}"


# ---------------------------------------------------------------------- migration
def migrate_meta(meta: Mapping[str, Any], version: int) -> dict[str, Any]:
    """The meta entries of a table of format `version` that this latbench writes otherwise, as it
    writes them (only those that change). From version 1: run settings without a cache context
    were timed warm; a companion entry holding its one measurement flat holds it as its sample;
    a calibration without a form fitted both scale and offset, and names its space and granularity."""
    out: dict[str, Any] = {}
    if version >= 2:
        return out
    run = meta.get(RUN_META)
    if isinstance(run, Mapping) and "context" not in run:
        out[RUN_META] = {**run, "context": "warm", "context_bytes": 0}
    for name in (INVOCATION_META, REFERENCE_META):
        entry = meta.get(name)
        if isinstance(entry, Mapping) and "samples" not in entry:
            out[name] = {**entry, "samples": [_flat_sample(entry)]}
    cals = meta.get(CALIBRATION_META)
    if isinstance(cals, Mapping) and any(isinstance(c, Mapping) and not _named(c) for c in cals.values()):
        out[CALIBRATION_META] = {k: _with_names(k, c) if isinstance(c, Mapping) else c for k, c in cals.items()}
    return out


def _flat_sample(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The one measurement an entry from before samples were kept holds flat, as its sample."""
    keep = ("status", "error", "estimate_ms", "taken_at", "round_medians", "stats", "below_resolution_us",
            "estimator")
    return {k: entry[k] for k in keep if k in entry}


def _named(c: Mapping[str, Any]) -> bool:
    return all(k in c for k in ("form", "space", "granularity"))


def _with_names(key: str, c: Mapping[str, Any]) -> dict[str, Any]:
    space, _, gran = key.rpartition("/")
    return {"form": "scale+offset", "space": space, "granularity": gran, **c}


__all__ = ["RunSettings", "CompanionEntry", "CompanionSample", "CalibrationEntry", "calibration_key",
           "migrate_meta", "RUN_META", "INVOCATION_META", "REFERENCE_META", "CALIBRATION_META"]
