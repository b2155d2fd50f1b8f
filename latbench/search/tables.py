"""Latency tables for a search: predictors built from table files (or open tables, or predictors
already built), their names, and the resolutions every table covers."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..errors import UsageError
from ..predict import DEFAULT_MAX_FALLBACK, Predictor, _guess_granularity


def table_names(paths: Iterable[Any]) -> list[str]:
    """Each table's name in outputs: its file stem, made unique."""
    names: list[str] = []
    for p in paths:
        stem = Path(os.fspath(p)).stem or str(p)
        name, k = stem, 2
        while name in names:
            name, k = f"{stem}#{k}", k + 1
        names.append(name)
    return names


def load_predictor(table: Any, space, calibration: bool = True,
                   max_fallback: float | None = DEFAULT_MAX_FALLBACK) -> Predictor:
    """A Predictor of `space` from a table path (opened read-only, never created) or an open
    LatencyTable, at the granularity it records. A table holding every key the space can use is
    loaded strict: no fallback regression to fit. max_fallback: the share of a subnet's keys the
    fallback may price (None: any)."""
    from ..store import LatencyTable
    from .constraints import table_keys

    if isinstance(table, (str, os.PathLike)):
        with LatencyTable.open(table, readonly=True) as t:  # a missing file: "no such latbench table"
            return load_predictor(t, space, calibration, max_fallback)
    keys = table.keys()
    if not keys:
        raise UsageError(f"{table.path}: the table holds no measurements")
    run = table.run_settings
    granularity = run.granularity if run else _guess_granularity(keys)
    fusion = (run.fusion if run else None) or "none"
    full = table_keys(space, None, granularity, fusion) <= keys
    return Predictor.from_table(table, space, granularity, fusion, strict=full, use_calibration=calibration,
                                max_fallback=max_fallback)


def load_predictors(space, tables: Any, calibration: bool = True,
                    max_fallback: float | None = DEFAULT_MAX_FALLBACK) -> dict[str, Predictor]:
    """{name: Predictor} from `tables`: one table or Predictor, a list of them (table files are
    named by their stems), or a {name: table or Predictor} mapping."""
    from ..store import LatencyTable

    if isinstance(tables, Mapping):
        named = dict(tables)
    else:
        items = [tables] if isinstance(tables, (str, os.PathLike, Predictor)) or isinstance(tables, LatencyTable) \
            else list(tables)
        if not items:
            raise UsageError("`tables` is empty: a search needs at least one latency table")
        paths = [t if isinstance(t, (str, os.PathLike)) else getattr(t, "path", None) or "table" for t in items]
        named = dict(zip(table_names(paths), items))
    return {name: t if isinstance(t, Predictor) else load_predictor(t, space, calibration, max_fallback)
            for name, t in named.items()}


def search_resolutions(space, predictors: Mapping[str, Predictor],
                       resolutions: Sequence[int] | None = None) -> tuple[dict | None, list[str]]:
    """(choices, notes): the resolutions to search, those asked for, else those every table
    covers without the fallback regression (all of them for a full table), as Domain choices
    (None: the whole space); and notes for the user. Refuses (FallbackError) when a subnet there
    would have more keys missing than a predictor allows."""
    from .constraints import refuse_fallback
    from .domain import Domain

    if space.resolution_position is None:
        if resolutions:
            raise UsageError(f"space {space.name} has no searchable resolution: leave `resolutions` out")
        refuse_fallback(predictors, Domain.of(space))
        return None, []
    allowed = tuple(space.resolutions)
    covered = set(allowed)
    for p in predictors.values():
        covered &= set(p.covered_resolutions)
    name = space.positions[space.resolution_position].name
    notes: list[str] = []
    if resolutions:
        res = space.check_resolutions(resolutions)
        loose = [r for r in res if r not in covered]
        if loose:
            notes.append(f"note: at resolution(s) {', '.join(map(str, loose))} some blocks are not in every "
                         "table; they are priced by the fallback regression")
        choices: dict | None = {name: list(res)}
    elif covered == set(allowed):
        choices = None
    elif not covered:
        notes.append("note: no resolution is fully covered by every table: missing blocks are priced by the "
                     "fallback regression (profile more, or pass `resolutions`)")
        choices = None
    else:
        res = sorted(covered)
        notes.append(f"searching the resolutions every table covers: {', '.join(map(str, res))} "
                     f"(of {len(allowed)}; `resolutions` to choose)")
        choices = {name: res}
    refuse_fallback(predictors, Domain.of(space, choices))
    return choices, notes


__all__ = ["table_names", "load_predictor", "load_predictors", "search_resolutions"]
