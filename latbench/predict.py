"""Price subnets and op lists from a latency table, fast enough to sit inside a search loop.

The space's slots are compiled once into per-slot tables indexed by (input state, the slot's
choice indices) -> (cost, misses, next state). `predict_batch` then walks the slots, not the
subnets: a gather and an add per slot over the whole population. Keys missing from the table are
priced by a fallback regression fitted on the table (per op kind, on FLOPs/bytes) and counted.

Every entry was timed as one runtime call, and so holds the runtime's fixed cost of a call once;
a network pays that cost once in all. Where the table measured it (meta "invocation", see
latbench.profiling), a price is the sum of (entry - invocation) over its keys plus one invocation.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from . import ops as O
from .errors import LatbenchError, UsageError
from .ops import OpSpec


class MissingKeyError(LatbenchError):
    """A key is not in the table and strict pricing was asked for."""


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
    def from_dict(cls, d: Mapping[str, Any]) -> "Calibration":
        return cls(**{k: d[k] for k in ("scale", "offset_ms", "n", "space", "granularity", "form") if k in d})


BATCH_CHUNK = 4096  # rows of predict_batch at a time: their intermediates stay in cache
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
class Pricer:
    """Prices ops at one granularity/fusion from a {key: ms} map, with a counted fallback."""

    def __init__(self, costs: Mapping[str, float], granularity: str = "block", fusion: str = "none",
                 fallback: Fallback | None = None, strict: bool = False,
                 fallback_ops: Iterable[OpSpec] | Callable[[], Iterable[OpSpec]] = (),
                 invocation_ms: float = 0.0):
        if granularity not in ("op", "block"):
            raise UsageError(f"granularity must be op or block, got {granularity!r}")
        if not (math.isfinite(invocation_ms) and invocation_ms >= 0):
            raise UsageError(f"invocation cost must be a finite number >= 0, got {invocation_ms!r}")
        self.invocation_ms = float(invocation_ms)
        self.costs = dict(costs)
        self.granularity = granularity
        self.fusion = fusion
        self.fallback = fallback
        self._fallback_ops = fallback_ops  # fitted on the first miss only: complete tables skip it
        self.strict = strict

    def lower(self, block: OpSpec) -> list[OpSpec]:
        """The table keys a block is priced by: itself, or its (runtime-fused) ops."""
        if self.granularity == "block":
            return [block]
        return O.fuse(O.expand(block), self.fusion)

    def price_op(self, op: OpSpec) -> tuple[float, bool]:
        """(ms, missed) for one table-level op."""
        v = self.costs.get(op.key)
        if v is not None:
            return v, False
        if self.strict:
            raise MissingKeyError(f"key not in table: {op.key}")
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
                   strict: bool = False) -> "Pricer":
        """The table's estimates and per-call cost; granularity/fusion default to what it records."""
        from .profiling import invocation_ms

        meta = table.meta_get("profile_run") or {}
        granularity = granularity or meta.get("granularity") or _guess_granularity(table.keys())
        return cls(table.estimates(), granularity, fusion or meta.get("fusion") or "none", None, strict,
                   lambda: table.ops(), invocation_ms(table))

    def price(self, ops: Iterable[OpSpec]) -> Price:
        inv = self.invocation_ms
        total, misses = inv, []
        for op in self.lower_all(ops):
            ms, missed = self.price_op(op)
            total += ms - inv
            if missed:
                misses.append(op.key)
        return Price(total, total, tuple(misses), invocation_ms=inv)


# ---------------------------------------------------------------------- compiled space
@dataclass
class _SlotTable:
    reads: np.ndarray  # positions read
    strides: np.ndarray  # multiplier of each read's choice index in the flat index
    state_stride: int
    cost: np.ndarray  # flat -> ms
    miss: np.ndarray  # flat -> number of fallback-priced keys
    next_state: np.ndarray  # flat -> state id after the slot

    @functools.cached_property
    def terms(self) -> list[tuple[int, int]]:
        """(position, stride) of each read: the flat index is state * state_stride + their sum."""
        return list(zip(self.reads.tolist(), self.strides.tolist()))


class Predictor:
    """Built once from a cost map and a space; predicts single configs, batches and op lists."""

    def __init__(self, space, costs: Mapping[str, float], granularity: str = "block",
                 fusion: str = "none", strict: bool = False, calibration: Calibration | None = None,
                 fallback_ops: Iterable[OpSpec] = (), resolutions: Sequence[int] | None = None,
                 invocation_ms: float = 0.0):
        self.space = space
        self.pricer = Pricer(costs, granularity, fusion, None, strict, fallback_ops, invocation_ms)
        self.calibration = calibration
        self._compile(resolutions)

    @classmethod
    def from_table(cls, table, space, granularity: str | None = None, fusion: str | None = None,
                   strict: bool = False, use_calibration: bool = True, **kw) -> "Predictor":
        """From a latbench LatencyTable: its estimates, per-call cost and (if asked) calibration;
        granularity/fusion default to what the table records."""
        pricer = Pricer.from_table(table, granularity, fusion, strict)
        cal = None
        if use_calibration:
            cals = table.meta_get("calibration") or {}
            d = cals.get(f"{space.name}/{pricer.granularity}")
            cal = Calibration.from_dict(d) if d else None
        return cls(space, pricer.costs, pricer.granularity, pricer.fusion, strict, cal,
                   fallback_ops=table.ops, invocation_ms=pricer.invocation_ms, **kw)

    @property
    def granularity(self) -> str:
        return self.pricer.granularity

    @property
    def invocation_ms(self) -> float:
        return self.pricer.invocation_ms

    # ------------------------------------------------------------------ compile
    def _compile(self, resolutions: Sequence[int] | None) -> None:
        sp = self.space
        choices = [tuple(p.choices) for p in sp.positions]
        self._allowed = None
        if resolutions and sp.resolution_position is not None:
            sp.check_resolutions(resolutions)
        cache: dict[OpSpec, tuple[float, int]] = {}
        inv = self.pricer.invocation_ms

        def block_cost(blocks) -> tuple[float, int]:
            total, miss = 0.0, 0
            for b in blocks:
                hit = cache.get(b)
                if hit is None:
                    c, m = 0.0, 0
                    for op in self.pricer.lower(b):
                        try:
                            ms, missed = self.pricer.price_op(op)
                        except MissingKeyError:
                            # strict: may be a combination no config reaches; a config that does
                            # reach it fails in predict, naming the key
                            ms, missed = math.nan, True
                        c += ms - inv
                        m += missed
                    hit = cache[b] = (c, m)
                total += hit[0]
                miss += hit[1]
            return total, miss

        states: dict[Any, int] = {None: 0}
        tables: list[_SlotTable] = []
        for slot in sp.slots:
            reads = list(slot.reads)
            cards = [len(choices[p]) for p in reads]
            per_state = int(np.prod(cards)) if cards else 1
            n = len(states) * per_state
            cost = np.empty(n)
            miss = np.empty(n, dtype=np.int32)
            nxt = np.empty(n, dtype=np.int64)
            new_states: dict[Any, int] = {}
            for state, sid in states.items():
                for j, combo in enumerate(itertools.product(*(range(c) for c in cards))):
                    vals = tuple(choices[p][i] for p, i in zip(reads, combo))
                    try:
                        blocks, st2 = slot.fn(state, vals)
                    except LatbenchError:
                        # unreachable combination (e.g. resolution too small): price it as infinite
                        cost[sid * per_state + j], miss[sid * per_state + j] = math.inf, 0
                        nxt[sid * per_state + j] = 0
                        continue
                    c, m = block_cost(blocks)
                    f = sid * per_state + j
                    cost[f], miss[f] = c, m
                    nxt[f] = new_states.setdefault(st2, len(new_states))
            strides = np.ones(len(reads), dtype=np.int64)
            for k in range(len(reads) - 2, -1, -1):
                strides[k] = strides[k + 1] * cards[k + 1]
            tables.append(_SlotTable(np.array(reads, dtype=np.int64), strides, per_state, cost, miss, nxt))
            states = new_states
        self._tables = _merge_readless(tables)
        tables = self._tables
        # plain-Python copies for the single-config path (numpy scalar access is slow)
        self._py = [(t.reads.tolist(), t.strides.tolist(), t.state_stride, t.cost.tolist(),
                     t.miss.tolist(), t.next_state.tolist()) for t in tables]

    # ------------------------------------------------------------------ predict
    def predict_raw(self, config: Any) -> tuple[float, int]:
        """(uncalibrated ms, number of fallback-priced keys) of one config."""
        idx = self.space.index(config).tolist()
        state, total, misses = 0, self.pricer.invocation_ms, 0
        for reads, strides, sstride, cost, miss, nxt in self._py:
            f = state * sstride
            for p, s in zip(reads, strides):
                f += idx[p] * s
            total += cost[f]
            misses += miss[f]
            state = nxt[f]
        return total, misses

    def predict(self, config: Any) -> float:
        """Predicted latency in ms of one config (any accepted form), calibrated if available."""
        ms, _ = self.predict_raw(config)
        if ms != ms:  # NaN: a strict table lacks a key of this config
            self._raise_missing(config)
        return self.calibration.apply(ms) if self.calibration else ms

    def _raise_missing(self, config: Any) -> None:
        for b in self.space.blocks(config):
            for op in self.pricer.lower(b):
                self.pricer.price_op(op)  # raises MissingKeyError naming the key
        raise MissingKeyError("a key of this config is not in the table")

    def explain(self, config: Any) -> Price:
        """The full price of one config: raw sum, calibrated value, keys priced by the fallback."""
        blocks = self.space.blocks(config)  # strict: Pricer.price raises on the first missing key
        p = self.pricer.price(blocks)
        ms = self.calibration.apply(p.raw_ms) if self.calibration else p.raw_ms
        return Price(ms, p.raw_ms, p.misses, self.calibration is not None, p.invocation_ms)

    def predict_batch(self, configs: np.ndarray, return_misses: bool = False, calibrated: bool = True):
        """Predicted ms for an int array (n, positions) of configs: one gather per slot.

        Rows go through in chunks of BATCH_CHUNK, each transposed once so that every position
        is a contiguous column and every intermediate stays in cache (whole-array temporaries
        of a million rows made this memory-bound, 4x slower)."""
        idx = np.asarray(configs)
        if idx.ndim != 2 or idx.shape[1] != self.space.n_positions:
            raise UsageError(f"predict_batch wants an int array (n, {self.space.n_positions}), got {idx.shape}")
        n = idx.shape[0]
        total = np.empty(n)
        misses = np.zeros(n, dtype=np.int32) if return_misses else None
        k = min(n, BATCH_CHUNK)
        flat, term, state = (np.empty(k, dtype=np.int64) for _ in range(3))
        acc, cost, miss = np.empty(k), np.empty(k), np.empty(k, dtype=np.int32)
        for a in range(0, n, BATCH_CHUNK):
            b = min(n, a + BATCH_CHUNK)
            m = b - a
            cols = np.ascontiguousarray(idx[a:b].T, dtype=np.int64)
            f, tv, st, ac, cv = flat[:m], term[:m], state[:m], acc[:m], cost[:m]
            st[:] = 0
            ac[:] = self.pricer.invocation_ms
            for t in self._tables:
                np.multiply(st, t.state_stride, out=f)
                for p, s in t.terms:
                    np.multiply(cols[p], s, out=tv)
                    np.add(f, tv, out=f)
                np.take(t.cost, f, out=cv)
                np.add(ac, cv, out=ac)
                if misses is not None:
                    np.take(t.miss, f, out=miss[:m])
                    misses[a:b] += miss[:m]
                np.take(t.next_state, f, out=st)
            total[a:b] = ac
        if self.pricer.strict:
            bad = np.flatnonzero(np.isnan(total))
            if bad.size:
                self._raise_missing(idx[bad[0]])
        if calibrated and self.calibration:
            total = self.calibration.apply(total)
        return (total, misses) if return_misses else total

    def price(self, ops: Iterable[OpSpec]) -> Price:
        """Price any op list (e.g. a lowered torch or ONNX model) at this table's granularity."""
        p = self.pricer.price(ops)
        if self.calibration:
            return Price(self.calibration.apply(p.raw_ms), p.raw_ms, p.misses, True, p.invocation_ms)
        return p


def _merge_readless(tables: list[_SlotTable]) -> list[_SlotTable]:
    """Fold each slot that reads no position into the slot before it (its cost and next state
    depend on the state alone), so predictions walk fewer tables."""
    out: list[_SlotTable] = []
    for t in tables:
        if out and t.reads.size == 0:
            prev = out[-1]
            cost = prev.cost + t.cost[prev.next_state]
            miss = prev.miss + t.miss[prev.next_state]
            out[-1] = _SlotTable(prev.reads, prev.strides, prev.state_stride, cost, miss,
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
