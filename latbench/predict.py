"""Price subnets and op lists from a latency table, fast enough to sit inside a search loop.

The space's slots are compiled once into per-slot tables indexed by (input state, the slot's
choice indices) -> (cost, misses, next state). `predict_batch` then walks the slots, not the
subnets: a gather and an add per slot over the whole population. Keys missing from the table are
priced by a fallback regression fitted on the table (per op kind, on FLOPs/bytes) and counted; a
subnet with more of them than `max_fallback` of its keys (10% by default) is an error naming the
table and what it covers. Where a table holds one value per input resolution for a key
(latbench.coverage), a config is priced with its own resolution's values, as Once-for-All's
LatencyTable prices it with that resolution's file.

Every entry was timed as one runtime call, and so holds the runtime's fixed cost of a call once;
a network pays that cost once in all. Where the table measured it (meta "invocation", see
latbench.runmeta), a price is one invocation plus each key's work, entry - invocation, taken as
0 where an entry is below the invocation (an op faster than the cost's own estimate does no
measurable work; without the floor a price could come out below zero).

An entry is priced by the table's own estimator (each row's `estimate`: the mean of its samples
for a profile today), or by another statistic of its samples asked for (`statistic`: median,
mean or min; `table_prices`), the per-call cost then by the same statistic.
"""
from __future__ import annotations

import functools
import itertools
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import ops as O
from .errors import LatbenchError, UsageError
from .ops import OpSpec
from .tablemeta import CalibrationEntry


class MissingKeyError(LatbenchError):
    """A key is not in the table and strict pricing was asked for."""


class FallbackError(LatbenchError):
    """A subnet has more keys priced by the fallback regression than the share allowed."""


DEFAULT_MAX_FALLBACK = 0.1  # share of a subnet's keys the fallback may price
STATISTICS = ("median", "mean", "min")  # what a price may be asked by, besides the table's estimator
_KEY_BITS = 20  # a compiled count packs (fallback-priced keys << _KEY_BITS) | keys
_KEY_MASK = (1 << _KEY_BITS) - 1


@dataclass(frozen=True)
class Calibration:
    """measured ~= scale * predicted + offset, fitted on k measured end-to-end latencies; `form`
    says which of the two were fitted (the other stays 1 or 0)."""

    scale: float = 1.0
    offset_ms: float = 0.0
    n: int = 0
    space: str = ""
    granularity: str = ""
    form: str = "scale+offset"  # as every calibration stored before forms were chosen

    def apply(self, ms):
        return self.scale * ms + self.offset_ms

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_entry(cls, e: "CalibrationEntry") -> "Calibration":
        """The calibration a table stores (latbench.tablemeta.CalibrationEntry)."""
        return cls(e.scale, e.offset_ms, e.n, e.space, e.granularity, e.form)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        return cls(**{k: d[k] for k in ("scale", "offset_ms", "n", "space", "granularity", "form") if k in d})


BATCH_CHUNK = 4096  # rows of predict_batch at a time: their intermediates stay in cache
WALK_ROWS = 8  # predict_batch walks batches of at most this many rows config by config
CALIBRATION_FORMS = ("offset", "scale", "scale+offset")  # fewer parameters first: they win ties


def _fit_form(form: str, p: np.ndarray, m: np.ndarray) -> tuple[float, float] | None:
    """(scale, offset) of `form` minimising the squared relative error sum(((fit - m) / m)^2), or
    None when it needs a non-positive scale (that would invert the table's ranking)."""
    w2 = 1.0 / m**2
    if form == "offset":
        return 1.0, float(np.sum((m - p) * w2) / np.sum(w2))
    if form == "scale":
        a = float(np.sum(p * m * w2) / np.sum(p * p * w2))
        return (a, 0.0) if a > 0 else None
    a, b = np.linalg.lstsq(np.stack([p / m, 1.0 / m], axis=1), np.ones_like(m), rcond=None)[0]
    return (float(a), float(b)) if a > 0 else None


def _loo_error(form: str, p: np.ndarray, m: np.ndarray) -> float:
    """Mean squared relative error of `form` on each point when fitted on the others."""
    errs = []
    for i in range(p.size):
        rest = np.arange(p.size) != i
        fit = _fit_form(form, p[rest], m[rest])
        if fit is None:
            return math.inf
        errs.append(((fit[0] * p[i] + fit[1]) / m[i] - 1.0) ** 2)
    return float(np.mean(errs))


def fit_calibration(predicted: Sequence[float], measured: Sequence[float], space: str = "",
                    granularity: str = "") -> Calibration:
    """Scale, offset, or both, fitted to minimise relative error; the form is the one with the
    least leave-one-out error on the k points (offset alone when fewer than 3). Over ~10 noisy
    subnets whose predictions span a narrow range, scale and offset are nearly collinear: on
    three 100-subnet runs here the chosen form put 2-7 points more of the other subnets within
    +-5% than a least-squares line did."""
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    if p.size == 0:
        raise UsageError("calibration needs at least one measured subnet")
    if p.shape != m.shape or not (np.all(np.isfinite(p)) and np.all(np.isfinite(m)) and np.all(m > 0)):
        raise UsageError("calibration needs as many predictions as finite measured latencies > 0")
    best = "offset"
    if p.size >= 3 and np.ptp(p) > 0:
        best_err = math.inf
        for form in CALIBRATION_FORMS:  # fewer parameters win ties: switch on a clearly smaller error
            err = _loo_error(form, p, m)
            if err < best_err - 1e-12:  # (1e-6 relative)^2
                best, best_err = form, err
    scale, offset = _fit_form(best, p, m)  # type: ignore[misc]  # offset never fails
    return Calibration(scale, offset, int(p.size), space, granularity, best)


@dataclass(frozen=True)
class Price:
    """The price of one op list or subnet."""

    ms: float  # calibrated if `calibrated`
    raw_ms: float  # uncalibrated: sum of table entries (and fallback estimates), less the
    #                per-call cost for all entries but one
    misses: tuple[str, ...] = ()  # keys priced by the fallback
    calibrated: bool = False
    invocation_ms: float = 0.0  # the per-call cost taken off each entry and added once
    keys: int = 0  # table keys priced, fallback-priced ones included


# ---------------------------------------------------------------------- fallback
def op_features(op: OpSpec) -> np.ndarray:
    """Features the fallback regresses latency on: FLOPs, bytes moved, a constant."""
    return np.array([op.flops / 1e6, op.bytes / 1e6, 1.0])


@dataclass
class Fallback:
    """Per-kind non-negative least squares of latency on op features, fitted on the table."""

    coefs: dict[str, np.ndarray] = field(default_factory=dict)
    overall: np.ndarray | None = None

    @classmethod
    def fit(cls, ops: Iterable[OpSpec], costs: Mapping[str, float]) -> "Fallback":
        by_kind: dict[str, list[tuple[np.ndarray, float]]] = {}
        for op in ops:
            v = costs.get(op.key)
            if v is None or not math.isfinite(v):
                continue
            by_kind.setdefault(op.kind, []).append((op_features(op), v))
        fb = cls()
        every = [row for rows in by_kind.values() for row in rows]
        if every:
            fb.overall = _nnls(every)
        for kind, rows in by_kind.items():
            if len(rows) >= 3:
                fb.coefs[kind] = _nnls(rows)
        return fb

    def __call__(self, op: OpSpec) -> float:
        coef = self.coefs.get(op.kind, self.overall)
        if coef is None:
            raise MissingKeyError(f"no table entry for {op.key} and an empty table to fit a fallback on")
        return max(float(op_features(op) @ coef), 1e-6)


def _nnls(rows) -> np.ndarray:
    """Least squares with coefficients clipped at zero, refitted on the kept features."""
    X = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    keep = np.ones(X.shape[1], dtype=bool)
    coef = np.zeros(X.shape[1])
    for _ in range(X.shape[1]):
        sol, *_ = np.linalg.lstsq(X[:, keep], y, rcond=None)
        coef[:] = 0
        coef[keep] = sol
        if (sol >= 0).all():
            break
        keep[np.flatnonzero(keep)[sol < 0]] = False
        if not keep.any():
            coef[:] = 0
            coef[-1] = max(float(np.median(y)), 1e-6)
            break
    return coef


# ---------------------------------------------------------------------- pricing of op lists
@functools.lru_cache(maxsize=1 << 16)
def _lowered(block: OpSpec, fusion: str) -> tuple[OpSpec, ...]:
    """A block's ops, fused the runtime's way: once per process for every predictor of a space
    (a search over two tables, a validation's predictors compile the same blocks)."""
    return tuple(O.fuse(O.expand(block), fusion))


class Pricer:
    """Prices ops at one granularity/fusion from a {key: ms} map, with a counted fallback;
    `by_resolution` {key: {resolution: ms}} holds the keys whose value depends on the resolution."""

    def __init__(self, costs: Mapping[str, float], granularity: str = "block", fusion: str = "none",
                 fallback: Fallback | None = None, strict: bool = False,
                 fallback_ops: Iterable[OpSpec] | Callable[[], Iterable[OpSpec]] = (),
                 invocation_ms: float = 0.0, by_resolution: Mapping[str, Mapping[int, float]] | None = None,
                 statistic: str = ""):
        if granularity not in ("op", "block"):
            raise UsageError(f"granularity must be op or block, got {granularity!r}")
        if not (math.isfinite(invocation_ms) and invocation_ms >= 0):
            raise UsageError(f"invocation cost must be a finite number >= 0, got {invocation_ms!r}")
        self.invocation_ms = float(invocation_ms)
        self.costs = dict(costs)
        self.by_resolution = {k: {int(r): float(v) for r, v in per.items()} for k, per in (by_resolution or {}).items()}
        self.granularity = granularity
        self.fusion = fusion
        self.fallback = fallback
        self._fallback_ops = fallback_ops  # fitted on the first miss only: complete tables skip it
        self.strict = strict
        self.statistic = statistic  # what the costs are, in words ("mean"), for reports

    def lower(self, block: OpSpec) -> list[OpSpec]:
        """The table keys a block is priced by: itself, or its (runtime-fused) ops."""
        if self.granularity == "block":
            return [block]
        return list(_lowered(block, self.fusion))

    def work(self, ms: float) -> float:
        """An entry's share of a network's price (latbench.runmeta.entry_work)."""
        from .runmeta import entry_work

        return entry_work(ms, self.invocation_ms)

    def lookup(self, op: OpSpec, resolution: int | None = None) -> float | None:
        """The table's value of `op` at `resolution`, None when it has none there."""
        per = self.by_resolution.get(op.key) if self.by_resolution else None
        if per is None:
            return self.costs.get(op.key)
        if resolution is None:
            raise UsageError(f"{op.key} has one value per resolution in this table "
                             f"({', '.join(map(str, sorted(per)))}): price it at a resolution")
        return per.get(resolution)

    def price_op(self, op: OpSpec, resolution: int | None = None) -> tuple[float, bool]:
        """(ms, missed) for one table-level op of a network at `resolution`."""
        v = self.lookup(op, resolution)
        if v is not None:
            return v, False
        if self.strict:
            per = self.by_resolution.get(op.key)
            where = f" at resolution {resolution} (it has {', '.join(map(str, sorted(per)))})" if per else ""
            raise MissingKeyError(f"key not in table{where}: {op.key}")
        if self.fallback is None:
            ops = self._fallback_ops() if callable(self._fallback_ops) else self._fallback_ops
            ops = list(ops)
            if not ops:
                raise MissingKeyError(f"key not in table and no fallback: {op.key}")
            self.fallback = Fallback.fit(ops, self.costs)
        return self.fallback(op), True

    def lower_all(self, ops: Iterable[OpSpec]) -> list[OpSpec]:
        """A whole op list as table keys: fusion runs across the list (a lowered model lists a
        conv and its BN as separate ops)."""
        ops = list(ops)
        if self.granularity == "block":
            return ops
        return O.fuse([o for b in ops for o in O.expand(b)], self.fusion)

    @classmethod
    def from_table(cls, table, granularity: str | None = None, fusion: str | None = None,
                   strict: bool = False, statistic: str | None = None) -> "Pricer":
        """The table's prices by `statistic` (None: its estimates; see `table_prices`), per
        resolution where it has them, and per-call cost; granularity/fusion default to what it records."""
        costs, by_resolution, inv, label = table_prices(table, statistic)
        run = table.run_settings
        granularity = granularity or (run.granularity if run else None) or _guess_granularity(table.keys())
        return cls(costs, granularity, fusion or (run.fusion if run else None) or "none", None, strict,
                   lambda: table.ops(), inv, by_resolution, label)

    def price(self, ops: Iterable[OpSpec], resolution: int | None = None, per_block: bool = False) -> Price:
        """The price of an op list run as one network at `resolution`; `per_block`: a space's
        blocks, each fused on its own as `Predictor` compiles them (consecutive blocks of a cell's
        DAG need not feed each other), else the list fused as one chain (a lowered model's ops)."""
        inv = self.invocation_ms
        total, misses = inv, []
        lowered = [o for b in ops for o in self.lower(b)] if per_block else self.lower_all(ops)
        for op in lowered:
            ms, missed = self.price_op(op, resolution)
            total += self.work(ms)
            if missed:
                misses.append(op.key)
        return Price(total, total, tuple(misses), invocation_ms=inv, keys=len(lowered))


def own_statistic(table) -> str:
    """The statistic a table's rows are priced by, in words: "mean", or each with its rows where
    they differ ("mean (90 rows), value (6 rows)")."""
    found = table.estimators()
    if len(found) == 1:
        return next(iter(found))
    return ", ".join(f"{name} ({n} rows)" for name, n in found.items()) or "none (no ok rows)"


def table_prices(table, statistic: str | None = None) -> tuple[dict[str, float], dict[str, dict[int, float]], float, str]:
    """(key -> ms, key -> {resolution: ms} for keys with a value per resolution, per-call cost,
    the statistic in words) of a table: by each row's estimate (`statistic` None), or by the
    median, mean or min of every row's samples and of the per-call cost's, refused in one line
    naming the table and how many rows do not hold it (an imported table may hold one value)."""
    from .coverage import table_values
    from .runmeta import invocation_ms

    if statistic is None:
        return table.estimates(), table_values(table), invocation_ms(table), own_statistic(table)  # type: ignore[return-value]
    if statistic not in STATISTICS:
        raise UsageError(f"`statistic` must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    costs = table.statistic_values(statistic)
    per = table_values(table, statistic)  # an OFA entry per resolution holds a mean only
    lacking = sum(1 for k, v in costs.items() if (None in per[k].values() if k in per else v is None))
    if lacking:
        raise UsageError(f"{table.path}: {lacking} of {len(costs)} rows hold no {statistic} (the table's rows "
                         f"are priced by {own_statistic(table)}), so `statistic={statistic}` cannot price it; "
                         f"leave `statistic` out to price by the table's own estimator")
    return costs, per, invocation_ms(table, statistic), statistic  # type: ignore[return-value]


_SLOT_STEPS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _slot_step(space, i: int, state: Any, vals: tuple) -> tuple[list[OpSpec], Any] | None:
    """Slot i's (blocks, next state) from `state` with choice values `vals`, None where the
    combination is unreachable; memoised per space, since every predictor of a space (a table's,
    the FLOPs and params counts, each table of a search) walks the same slots."""
    memo = _SLOT_STEPS.setdefault(space, {})
    key = (i, state, vals)
    if key not in memo:
        try:
            memo[key] = space.slots[i].fn(state, vals)
        except LatbenchError:
            memo[key] = None
    return memo[key]


def resolve_space(space_or_name):
    """A SearchSpace from itself, a registered name or a YAML file; None stays None."""
    if space_or_name is None or not isinstance(space_or_name, str):
        return space_or_name
    from .spaces import get_space

    return get_space(space_or_name)


# ---------------------------------------------------------------------- compiled space
@dataclass
class _SlotTable:
    reads: np.ndarray  # positions read
    strides: np.ndarray  # multiplier of each read's choice index in the flat index
    state_stride: int
    cost: np.ndarray  # flat -> ms
    count: np.ndarray  # flat -> (fallback-priced keys << _KEY_BITS) | keys, int64
    next_state: np.ndarray  # flat -> state id after the slot

    @functools.cached_property
    def terms(self) -> list[tuple[int, int]]:
        """(position, stride) of each read: the flat index is state * state_stride + their sum."""
        return list(zip(self.reads.tolist(), self.strides.tolist()))

    @property
    def misses(self) -> np.ndarray:
        return self.count >> _KEY_BITS

    @property
    def keys(self) -> np.ndarray:
        return self.count & _KEY_MASK


class Predictor:
    """Built once from a cost map and a space; predicts single configs, batches and op lists.
    Self-contained once built: it holds copies of what it prices by (and fits its fallback on),
    never the table. Without a space it prices op lists (`price`) and models (`price_model`) only.

    max_fallback: the share of a subnet's keys the fallback regression may price before a
    prediction is a FallbackError (None: any share). `coverage` names the table in that error."""

    def __init__(self, space, costs: Mapping[str, float], granularity: str = "block",
                 fusion: str = "none", strict: bool = False, calibration: Calibration | None = None,
                 fallback_ops: Iterable[OpSpec] = (), resolutions: Sequence[int] | None = None,
                 invocation_ms: float = 0.0, by_resolution: Mapping[str, Mapping[int, float]] | None = None,
                 max_fallback: float | None = DEFAULT_MAX_FALLBACK, coverage=None, statistic: str = ""):
        if max_fallback is not None and not (0.0 <= max_fallback <= 1.0):
            raise UsageError(f"max_fallback must be a share between 0 and 1 (or None), got {max_fallback!r}")
        self.space = space
        self.pricer = Pricer(costs, granularity, fusion, None, strict, fallback_ops, invocation_ms, by_resolution,
                             statistic)
        self.calibration = calibration
        self.max_fallback = max_fallback
        self.coverage = coverage
        self._tables: list[_SlotTable] = []
        self._risk = None
        if space is not None:
            self._compile(resolutions)

    @classmethod
    def from_table(cls, table, space=None, granularity: str | None = None, fusion: str | None = None,
                   strict: bool = False, use_calibration: bool = True, statistic: str | None = None,
                   **kw) -> "Predictor":
        """From a latency table (a path, opened read-only, or an open LatencyTable) and a space
        (a SearchSpace, a registered name or a YAML file; None: op lists and models only): the
        table's prices by `statistic` (None: its estimates; per resolution where it has them),
        per-call cost and (if asked) calibration, which is fitted to the table's own prices and so
        left out when another statistic prices it; granularity/fusion default to what the table
        records. The predictor copies what it needs: it works after the table is closed."""
        import os

        from .coverage import Coverage

        from .store import LatencyTable

        if isinstance(table, (str, os.PathLike)):
            with LatencyTable.open(table, readonly=True) as t:
                return cls.from_table(t, space, granularity, fusion, strict, use_calibration, statistic, **kw)
        if not isinstance(table, LatencyTable):
            raise UsageError(f"`table` must be a path or an open LatencyTable, got {type(table).__name__}")
        space = resolve_space(space)
        pricer = Pricer.from_table(table, granularity, fusion, strict, statistic)
        cal = None
        if space is not None and use_calibration and statistic in (None, own_statistic(table)):
            stored = table.calibration(space, pricer.granularity)
            cal = Calibration.from_entry(stored) if stored else None
        # the fallback's ops are copied now (a strict predictor never falls back): no table after this
        ops = () if strict else table.ops()
        return cls(space, pricer.costs, pricer.granularity, pricer.fusion, strict, cal,
                   fallback_ops=ops, invocation_ms=pricer.invocation_ms,
                   by_resolution=pricer.by_resolution, coverage=Coverage.of(table), statistic=pricer.statistic, **kw)

    def _need_space(self, what: str):
        """The space, or a UsageError naming the `space` parameter (a predictor of op lists only)."""
        if self.space is None:
            raise UsageError(f"{what} prices configs of a space: this Predictor was built without one "
                             f"(give `space` to Predictor.from_table); price(ops) and price_model(model) "
                             f"need none")
        return self.space

    @property
    def granularity(self) -> str:
        return self.pricer.granularity

    @property
    def statistic(self) -> str:
        """What the table's entries are priced by, in words (Pricer.statistic)."""
        return self.pricer.statistic

    @property
    def invocation_ms(self) -> float:
        return self.pricer.invocation_ms

    # ------------------------------------------------------------------ compile
    def _compile(self, resolutions: Sequence[int] | None) -> None:
        """The slot tables. Where the table has per-resolution values, every state also carries
        the config's resolution (read by the first slot), so each key is priced at its own."""
        sp = self.space
        choices = [tuple(p.choices) for p in sp.positions]
        if resolutions and sp.resolution_position is not None:
            sp.check_resolutions(resolutions)
        rpos = sp.resolution_position
        carry = bool(self.pricer.by_resolution) and rpos is not None
        fixed = sp.fixed_resolution if rpos is None else None
        block_cost = self._block_coster()
        states: dict[Any, int] = {(None, None) if carry else None: 0}
        tables: list[_SlotTable] = []
        for i, slot in enumerate(sp.slots):
            add_r = carry and i == 0 and rpos not in slot.reads
            reads = list(slot.reads) + ([rpos] if add_r else [])
            cards = [len(choices[p]) for p in reads]
            per_state = int(np.prod(cards)) if cards else 1
            n = len(states) * per_state
            cost = np.empty(n)
            count = np.zeros(n, dtype=np.int64)
            nxt = np.zeros(n, dtype=np.int64)
            new_states: dict[Any, int] = {}
            for state, sid in states.items():
                inner, r = state if carry else (state, fixed)
                for j, combo in enumerate(itertools.product(*(range(c) for c in cards))):
                    vals = tuple(choices[p][k] for p, k in zip(reads, combo))
                    at = vals[reads.index(rpos)] if carry and r is None else r
                    f = sid * per_state + j
                    step = _slot_step(sp, i, inner, vals[:-1] if add_r else vals)
                    if step is None:  # unreachable combination (e.g. resolution too small): infinite
                        cost[f] = math.inf
                        continue
                    blocks, st2 = step
                    cost[f], count[f] = block_cost(blocks, at)
                    nxt[f] = new_states.setdefault((st2, at) if carry else st2, len(new_states))
            strides = np.ones(len(reads), dtype=np.int64)
            for k in range(len(reads) - 2, -1, -1):
                strides[k] = strides[k + 1] * cards[k + 1]
            tables.append(_SlotTable(np.array(reads, dtype=np.int64), strides, per_state, cost, count, nxt))
            states = new_states
        self._tables = _merge_readless(tables)
        # plain-Python copies for the single-config path (numpy scalar access is slow)
        self._py = [(t.reads.tolist(), t.strides.tolist(), t.state_stride, t.cost.tolist(),
                     t.count.tolist(), t.next_state.tolist()) for t in self._tables]
        self._risk = self._fallback_risk()

    def _block_coster(self) -> Callable[[Sequence[OpSpec], int | None], tuple[float, int]]:
        """(cost less the per-call cost, packed count) of a slot's blocks at a resolution; cached."""
        cache: dict[tuple[OpSpec, int | None], tuple[float, int]] = {}

        def one(b: OpSpec, r: int | None) -> tuple[float, int]:
            c, m, k = 0.0, 0, 0
            for op in self.pricer.lower(b):
                try:
                    ms, missed = self.pricer.price_op(op, r)
                except MissingKeyError:
                    # strict: may be a combination no config reaches; a config that does
                    # reach it fails in predict, naming the key
                    ms, missed = math.nan, True
                c += self.pricer.work(ms)
                m += missed
                k += 1
            return c, (m << _KEY_BITS) | k

        def cost(blocks: Sequence[OpSpec], r: int | None) -> tuple[float, int]:
            total, count = 0.0, 0
            for b in blocks:
                hit = cache.get((b, r))
                if hit is None:
                    hit = cache[(b, r)] = one(b, r)
                total += hit[0]
                count += hit[1]
            return total, count

        return cost

    def _fallback_risk(self) -> np.ndarray | None:
        """Per resolution index (one entry for a space without one): can a config there have a
        fallback-priced key? None when no config can, so predict_batch checks nothing."""
        if not any(bool((t.misses[~np.isposinf(t.cost)] > 0).any()) for t in self._tables):
            return None
        sp, rpos = self.space, self.space.resolution_position
        allowed = [list(range(len(p.choices))) for p in sp.positions]
        best = best_over_slots(self._tables, allowed, lambda t: t.misses, lambda t: ~np.isposinf(t.cost),
                               maximize=True, keep=() if rpos is None else (rpos,))
        risk = np.zeros(len(sp.resolutions) if rpos is not None else 1, dtype=bool)
        for bound, (worst, _) in best.items():
            if worst > 0:
                risk[[v for _, v in bound] or slice(None)] = True
        return risk

    @property
    def covered_resolutions(self) -> tuple[int, ...]:
        """The space's resolutions at which no config has a key priced by the fallback."""
        if self._need_space("covered_resolutions").resolution_position is None:
            return ()
        res = self.space.resolutions
        return tuple(res) if self._risk is None else tuple(r for r, bad in zip(res, self._risk) if not bad)

    # ------------------------------------------------------------------ predict
    def _walk(self, idx: list[int]) -> tuple[float, int]:
        """(uncalibrated ms, packed count) of one index config."""
        state, total, count = 0, self.pricer.invocation_ms, 0
        for reads, strides, sstride, cost, cnt, nxt in self._py:
            f = state * sstride
            for p, s in zip(reads, strides):
                f += idx[p] * s
            total += cost[f]
            count += cnt[f]
            state = nxt[f]
        return total, count

    def predict_raw(self, config: Any) -> tuple[float, int]:
        """(uncalibrated ms, number of fallback-priced keys) of one config; never refuses."""
        self._need_space("predict_raw")
        ms, count = self._walk(self.space.index(config).tolist())
        return ms, count >> _KEY_BITS

    def predict(self, config: Any) -> float:
        """Predicted latency in ms of one config (any accepted form), calibrated if available."""
        idx = self._need_space("predict").index(config)
        ms, count = self._walk(idx.tolist())
        if ms != ms:  # NaN: a strict table lacks a key of this config
            self._raise_missing(config)
        if count >> _KEY_BITS:
            self._check_fallback(idx, count >> _KEY_BITS, count & _KEY_MASK)
        return self.calibration.apply(ms) if self.calibration else ms

    def _raise_missing(self, config: Any) -> None:
        r = self.resolution_of(config)
        for b in self.space.blocks(config):
            for op in self.pricer.lower(b):
                self.pricer.price_op(op, r)  # raises MissingKeyError naming the key
        raise MissingKeyError("a key of this config is not in the table")

    def resolution_of(self, config: Any) -> int | None:
        """The input resolution of a config (the space's fixed one, or None)."""
        rpos = self.space.resolution_position
        if rpos is None:
            return self.space.fixed_resolution
        return int(self.space.values(config)[rpos])

    def _check_fallback(self, config: Any, misses: int, keys: int) -> None:
        """FallbackError when the fallback priced more than max_fallback of the config's keys."""
        if self.max_fallback is None or self.pricer.strict or misses <= self.max_fallback * keys:
            return
        r = self.resolution_of(config)
        at = f" r={r}" if self.space.resolution_position is not None else ""
        where = self.coverage.path if self.coverage else "the cost map"
        covers = f" ({self.coverage.describe()})" if self.coverage else ""
        raise FallbackError(f"{where} prices {self.space.name}{at} with {misses} of {keys} keys missing, "
                            f"over the {self.max_fallback:.0%} allowed{covers}; `max_fallback=None` prices "
                            f"them with the fallback regression")

    def explain(self, config: Any) -> Price:
        """The full price of one config: raw sum, calibrated value, keys priced by the fallback."""
        blocks = self._need_space("explain").blocks(config)  # strict: Pricer.price raises on the first missing key
        p = self.pricer.price(blocks, self.resolution_of(config), per_block=True)
        self._check_fallback(config, len(p.misses), p.keys)
        ms = self.calibration.apply(p.raw_ms) if self.calibration else p.raw_ms
        return Price(ms, p.raw_ms, p.misses, self.calibration is not None, p.invocation_ms, p.keys)

    def predict_batch(self, configs: np.ndarray, return_misses: bool = False, calibrated: bool = True):
        """Predicted ms for an int array (n, positions) of configs: one gather per slot.

        Rows go through in chunks of BATCH_CHUNK, each transposed once so that every position
        is a contiguous column and every intermediate stays in cache (whole-array temporaries
        of a million rows made this memory-bound, 4x slower). Fallback-priced keys are counted
        only where asked or where a chunk holds a resolution at which some config has them."""
        idx = np.asarray(configs)
        self._need_space("predict_batch")
        if idx.ndim != 2 or idx.shape[1] != self.space.n_positions:
            raise UsageError(f"predict_batch wants an int array (n, {self.space.n_positions}), got {idx.shape}")
        n = idx.shape[0]
        check = self._risk is not None and self.max_fallback is not None and not self.pricer.strict
        if n <= WALK_ROWS:  # a few rows (an ask/tell loop): the per-config walk, no per-slot numpy calls
            walked = [self._walk(row) for row in idx.tolist()]
            total = np.array([w[0] for w in walked], dtype=np.float64)
            counts = np.array([w[1] for w in walked], dtype=np.int64)
            if check:
                self._check_rows(idx, counts)
            return self._finish(idx, total, (counts >> _KEY_BITS).astype(np.int32) if return_misses else None,
                                calibrated)
        total = np.empty(n)
        misses = np.zeros(n, dtype=np.int32) if return_misses else None
        rpos = self.space.resolution_position
        k = min(n, BATCH_CHUNK)
        flat, term, state, cnt, cacc = (np.empty(k, dtype=np.int64) for _ in range(5))
        acc, cost = np.empty(k), np.empty(k)
        for a in range(0, n, BATCH_CHUNK):
            b = min(n, a + BATCH_CHUNK)
            m = b - a
            cols = np.ascontiguousarray(idx[a:b].T, dtype=np.int64)
            counting = return_misses or (check and bool(self._risk[cols[rpos] if rpos is not None else 0].any()))
            f, tv, st, ac, cv, ct, ca = flat[:m], term[:m], state[:m], acc[:m], cost[:m], cnt[:m], cacc[:m]
            st[:] = 0
            ca[:] = 0
            ac[:] = self.pricer.invocation_ms
            for t in self._tables:
                np.multiply(st, t.state_stride, out=f)
                for p, s in t.terms:
                    np.multiply(cols[p], s, out=tv)
                    np.add(f, tv, out=f)
                np.take(t.cost, f, out=cv)
                np.add(ac, cv, out=ac)
                if counting:
                    np.take(t.count, f, out=ct)
                    np.add(ca, ct, out=ca)
                np.take(t.next_state, f, out=st)
            total[a:b] = ac
            if misses is not None:
                misses[a:b] = ca >> _KEY_BITS
            if counting and check:
                self._check_rows(idx[a:b], ca)
        return self._finish(idx, total, misses, calibrated)

    def _finish(self, idx: np.ndarray, total: np.ndarray, misses: np.ndarray | None, calibrated: bool):
        """predict_batch's result: a strict table's missing key refused, the calibration applied."""
        if self.pricer.strict:
            bad = np.flatnonzero(np.isnan(total))
            if bad.size:
                self._raise_missing(idx[bad[0]])
        if calibrated and self.calibration:
            total = self.calibration.apply(total)
        return (total, misses) if misses is not None else total

    def _check_rows(self, configs: np.ndarray, counts: np.ndarray) -> None:
        """FallbackError for the first row whose fallback-priced keys exceed the share."""
        miss, keys = counts >> _KEY_BITS, counts & _KEY_MASK
        bad = np.flatnonzero(miss > self.max_fallback * keys)
        if bad.size:
            i = int(bad[0])
            self._check_fallback(configs[i].astype(np.int64), int(miss[i]), int(keys[i]))

    def worst_fallback(self, allowed: Sequence[Sequence[int]]) -> tuple[float, list[tuple[int, int]]]:
        """The largest (fallback-priced keys - max_fallback x keys) of any config whose choice
        indices lie in `allowed` (per position), and the (position, index) pairs reaching it:
        above 0, some config there would be refused."""
        share = self.max_fallback or 0.0
        best = best_over_slots(self._tables, allowed, lambda t: t.misses - share * t.keys,
                               lambda t: ~np.isposinf(t.cost), maximize=True)
        if not best:
            return -math.inf, []
        worst, assign = best[()]
        return worst, list(assign)

    def check_fallback(self, allowed: Sequence[Sequence[int]]) -> None:
        """Refuse at once, before a search, when some config within `allowed` would be refused."""
        if self._risk is None or self.max_fallback is None or self.pricer.strict:
            return
        worst, assign = self.worst_fallback(allowed)
        if worst > 0:
            config = np.array([a[0] for a in allowed], dtype=np.int64)
            for p, v in assign:
                config[p] = v
            _, count = self._walk(config.tolist())
            self._check_fallback(config, count >> _KEY_BITS, count & _KEY_MASK)

    def price(self, ops: Iterable[OpSpec], resolution: int | None = None) -> Price:
        """Price any op list (e.g. a lowered torch or ONNX model) at this table's granularity."""
        p = self.pricer.price(ops, resolution)
        if self.calibration:
            return Price(self.calibration.apply(p.raw_ms), p.raw_ms, p.misses, True, p.invocation_ms, p.keys)
        return p

    def price_model(self, model, input_shape: Sequence[int] | None = None,
                    max_fallback: float | None = DEFAULT_MAX_FALLBACK):
        """A whole model priced from an op-level table: a torch.nn.Module (with `input_shape`) or an
        ONNX file or bytes (`input_shape` for symbolic dims); a ModelPrice (latbench.model_price)
        that lists compute the table cannot price instead of dropping it."""
        from .model_price import price_model

        return price_model(self, model, input_shape, max_fallback=max_fallback)


def best_over_slots(tables: Sequence[_SlotTable], allowed: Sequence[Sequence[int]],
                    values: Callable[[_SlotTable], np.ndarray], usable: Callable[[_SlotTable], np.ndarray],
                    maximize: bool = False, keep: Sequence[int] = ()) -> dict[tuple, tuple[float, tuple]]:
    """Exact minimum (or maximum) over configs of the sum of `values(t)[flat]` along the compiled
    slot tables, for each binding of the `keep` positions: {((position, index), ...): (best,
    ((position, index), ...) reaching it)}. Choices outside `allowed` and entries where
    `usable(t)` is False are never taken.

    A dynamic programme: its state is the slot state plus the choices later slots (or `keep`)
    still read, so it never walks the subnets; non-monotonic tables are handled exactly."""
    later: list[frozenset] = []
    seen: set = set(keep)
    for t in reversed(tables):
        later.append(frozenset(seen))
        seen |= set(t.reads.tolist())
    later.reverse()
    sign = -1.0 if maximize else 1.0
    frontier: dict = {(0, ()): (0.0, ())}
    for i, t in enumerate(tables):
        reads, strides = t.reads.tolist(), t.strides.tolist()
        vals, ok, nstate = values(t).tolist(), usable(t).tolist(), t.next_state.tolist()
        nxt: dict = {}
        for (state, bound), (acc, assign) in frontier.items():
            fixed = dict(bound)
            free = [p for p in reads if p not in fixed]
            for combo in itertools.product(*(allowed[p] for p in free)):
                pick = {**fixed, **dict(zip(free, combo))}
                f = state * t.state_stride + sum(pick[p] * s for p, s in zip(reads, strides))
                if not ok[f]:
                    continue
                total = acc + sign * vals[f]
                key = (nstate[f], tuple(sorted((p, v) for p, v in pick.items() if p in later[i])))
                old = nxt.get(key)
                if old is None or total < old[0]:
                    nxt[key] = (total, assign + tuple(zip(free, combo)))
        frontier = nxt
    out: dict[tuple, tuple[float, tuple]] = {}
    for (_, bound), (total, assign) in frontier.items():
        k = tuple((p, v) for p, v in bound if p in keep)
        if k not in out or total < out[k][0]:
            out[k] = (total, assign)
    return {k: (sign * total, assign) for k, (total, assign) in out.items()}


def _merge_readless(tables: list[_SlotTable]) -> list[_SlotTable]:
    """Fold each slot that reads no position into the slot before it (its cost and next state
    depend on the state alone), so predictions walk fewer tables."""
    out: list[_SlotTable] = []
    for t in tables:
        if out and t.reads.size == 0:
            prev = out[-1]
            cost = prev.cost + t.cost[prev.next_state]
            count = prev.count + t.count[prev.next_state]
            out[-1] = _SlotTable(prev.reads, prev.strides, prev.state_stride, cost, count,
                                 t.next_state[prev.next_state])
        else:
            out.append(t)
    return out


def _guess_granularity(keys: Iterable[str]) -> str:
    """'block' when the table holds block keys (mbconv/expanded_conv/resnet blocks), else 'op'."""
    for k in keys:
        if k.startswith(("expanded_conv", "mbconv", "bottleneck", "basic", "Conv-", "Conv_1", "Logits")):
            return "block"
    return "op"
