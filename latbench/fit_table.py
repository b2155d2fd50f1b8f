"""`latbench fit`: a latency table fitted from measured networks (a CSV of config, ms), optionally
transferred from other tables (latbench.transfer), written as a table that predict and search use
like a measured one. Its profile says it was fitted and from how many networks; every row keeps its
fitted cost's standard deviation, how many networks held the key, and the prior's cost.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import FormatError, LatbenchError, UsageError
from .fit import FitResult, fit_costs, key_counts
from .ops import OpSpec

CONFIG_COLUMNS = ("config", "arch")  # the config column, first one present (HELP's CSVs: arch)
LATENCY_COLUMNS = ("ms", "measured_ms")  # `latbench validate --csv` writes measured_ms


@dataclass(frozen=True)
class MeasuredNetworks:
    """Configs of one space (index vectors) with their end-to-end latencies in ms."""

    space: str
    configs: np.ndarray  # (n, positions) int64
    ms: np.ndarray  # (n,)
    source: str  # file and column, for the record
    device: str = ""  # whose latencies: the column's name, or the file's where the column is a plain ms

    def take(self, n: int | None, seed: int = 0) -> "MeasuredNetworks":
        """n of them drawn without replacement (seeded); all when n is None."""
        if n is None:
            return self
        if not 1 <= n <= len(self.ms):
            raise UsageError(f"{self.source}: asked for {n} networks, the file holds {len(self.ms)}")
        idx = np.sort(np.random.default_rng(seed).choice(len(self.ms), n, replace=False))
        return MeasuredNetworks(self.space, self.configs[idx], self.ms[idx], f"{self.source}, {n} drawn (seed {seed})",
                                self.device)


def _config_value(text: Any) -> Any:
    """A CSV cell as a config: JSON when it looks like JSON (validate --csv writes JSON), else the text."""
    if isinstance(text, str) and text.strip()[:1] in "[{\"":
        return json.loads(text)
    return text


def read_networks(path: str, space, column: str | None = None, config_column: str | None = None) -> MeasuredNetworks:
    """Measured networks from a CSV: a config column (`config` or `arch`, or `config_column`) in
    any form the space accepts, and a latency column in ms (`ms`, `measured_ms`, or `column`)."""
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: not a readable CSV ({e})") from None
    have = list(df.columns)
    cfg_col = config_column or next((c for c in CONFIG_COLUMNS if c in have), None)
    ms_col = column or next((c for c in LATENCY_COLUMNS if c in have), None)
    for what, col, flag in (("config", cfg_col, "--config-column"), ("latency", ms_col, "--column")):
        if col is None or col not in have:
            raise UsageError(f"{path}: no {what} column {col or ''}".rstrip() + f" (columns: {', '.join(have)}); "
                             f"name it with {flag}")
    if df.empty:
        raise UsageError(f"{path}: holds no networks")
    configs, ms = [], []
    for i, (cfg, v) in enumerate(zip(df[cfg_col], df[ms_col]), start=2):  # line 1 is the header
        where = f"{path}:{i}"
        try:
            configs.append(space.index(_config_value(cfg)))
        except (LatbenchError, ValueError) as e:
            raise type(e)(f"{where}: {e}") if isinstance(e, LatbenchError) else UsageError(f"{where}: {e}") from None
        try:
            x = float(v)
        except ValueError:
            raise UsageError(f"{where}: {ms_col}={v!r} is not a number of ms") from None
        if not (math.isfinite(x) and x > 0):
            raise UsageError(f"{where}: {ms_col}={v!r} must be a finite latency > 0 ms")
        ms.append(x)
    name = os.path.basename(path)
    device = os.path.splitext(name)[0] if ms_col in LATENCY_COLUMNS else ms_col
    return MeasuredNetworks(space.name, np.array(configs, dtype=np.int64), np.array(ms), f"{name}:{ms_col}", device)


def space_ops(space, granularity: str, fusion: str) -> list[OpSpec]:
    """Every table key of the space at its resolutions, lowered as `Predictor` prices blocks."""
    from .predict import Pricer

    pricer = Pricer({}, granularity, fusion)
    out: dict[str, OpSpec] = {}
    for block in space.enumerate_blocks():
        for op in pricer.lower(block):
            out.setdefault(op.key, op)
    return list(out.values())


def prior_settings(tables: Sequence[Any], granularity: str | None) -> tuple[str, str]:
    """The granularity and fusion the fit must share with its (open) prior tables: one of each,
    the tables' unless `granularity` is given."""
    found: set[tuple[str, str]] = set()
    for t in tables:
        run = t.run_settings
        found.add(((run.granularity if run else None) or "block", (run.fusion if run else None) or "none"))
    if granularity:
        found = {(granularity, f) for _, f in found}
    if len(found) > 1:
        raise UsageError("the prior tables price at different granularities/fusions: "
                         + "; ".join(f"{g}/{f}" for g, f in sorted(found)) + " (give tables of one kind)")
    return next(iter(found)) if found else (granularity or "block", "none")


def fit_table(out: str, space, networks: MeasuredNetworks, priors: Sequence[str] = (), granularity: str | None = None,
              device_name: str = "", lam: float | None = None, seed: int = 0, refine: bool = False) -> FitResult:
    """Fit (priors empty) or transfer (priors: tables of other devices) per-key costs from
    `networks` and write them as a new table `out`; `refine`: the one prior is the device's own
    measured table, whose profile and run settings the refined table keeps (so `validate` and
    `calibrate` measure it on that device), with the fit recorded beside them."""
    import contextlib

    from .store import LatencyTable
    from .transfer import table_prior, transfer_fit

    if os.path.exists(out):
        raise UsageError(f"{out} exists: a fitted table is written whole; give another --output or remove it")
    if refine and len(priors) != 1:
        raise UsageError(f"refining takes exactly one prior table, the device's own measured one; got {len(priors)}")
    with contextlib.ExitStack() as stack:
        tables = [stack.enter_context(LatencyTable.open(p, readonly=True)) for p in priors]
        granularity, fusion = prior_settings(tables, granularity)
        if tables:
            counts = key_counts(space, networks.configs, granularity, fusion, space_ops(space, granularity, fusion))
            prior_list = [table_prior(t, counts.ops, os.path.basename(p), granularity) for t, p in zip(tables, priors)]
            result = transfer_fit(counts, networks.ms, prior_list, lam=lam, seed=seed)
        else:
            counts = key_counts(space, networks.configs, granularity, fusion)
            result = fit_costs(counts, networks.ms, lam=lam, seed=seed)
        own = (tables[0].require_profile(), tables[0].run_settings) if refine else (None, None)
    write_fitted(out, result, space, networks, priors, device_name, *own)
    return result


def fitted_profile(result: FitResult, networks: MeasuredNetworks, priors: Sequence[str], device_name: str):
    """The profile of a fitted table: the device named, and that it was fitted, from how many networks."""
    from . import __version__
    from .device import DeviceProfile

    how = f"fitted from {result.networks} networks ({networks.source})"
    if priors:
        how += f", transferred from {', '.join(os.path.basename(p) for p in priors)}"
    return DeviceProfile(agent="fit", runtime="end-to-end fit", runtime_version=__version__, threads=0,
                         delegate="", device=device_name or networks.device,
                         options=(("fit", how),), info={"fit": result.record()})


def write_fitted(out: str, result: FitResult, space, networks: MeasuredNetworks, priors: Sequence[str],
                 device_name: str = "", profile=None, run=None) -> None:
    """Write `result` as a table: one row per key (cost + per-network cost, as a measured row holds
    one call's fixed cost), the per-network cost as its per-call cost, the fit in its run settings;
    `profile`/`run`: a refined table's own device profile and run settings (default: a fit's)."""
    import dataclasses

    from .measure import Measurement
    from .store import LatencyTable
    from .tablemeta import CompanionEntry, RunSettings

    kind = "refine:" if profile is not None else "transfer:" if priors else "fit:"
    source = kind + networks.source
    record = {"fit": result.record(), "source": source}
    if profile is None:
        profile = fitted_profile(result, networks, priors, device_name)
        run = RunSettings(result.granularity, result.fusion, (space.name,), estimator="value", other=record)
    else:
        base = run or RunSettings(result.granularity, result.fusion, (space.name,))
        run = dataclasses.replace(base, estimator="value", other={**base.other, **record})
    now = time.time()
    with LatencyTable.open(out, profile) as t:
        pid = profile.id
        rows = []
        for j, op in enumerate(result.ops):
            extra = {"fit": {"sd_ms": _num(result.sd[j]), "networks": int(result.seen[j]),
                             "prior_ms": _num(result.prior.cost[j]), "prior_only": bool(result.seen[j] == 0)}}
            m = Measurement(op.key, pid, op.to_dict(), None, {"fit": "end-to-end"}, taken_at=now, extra=extra)
            row = t.measurement_row(m, source, "value", float(result.cost[j] + result.intercept))
            row["std"] = _num(result.sd[j])
            row["n"] = int(result.seen[j]) or None
            rows.append(row)
        t.put_rows(rows)
        t.set_run_settings(run)
        t.set_invocation(CompanionEntry(estimate_ms=result.intercept, status="ok", estimator="value",
                                        combine="fitted: the per-network cost of the end-to-end fit",
                                        profile_id=pid, taken_at=now,
                                        other={"sd_ms": _num(result.intercept_sd)}))


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


__all__ = ["MeasuredNetworks", "read_networks", "fit_table", "write_fitted", "space_ops", "prior_settings"]
