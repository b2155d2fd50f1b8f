"""Once-for-All LatencyTable YAML export and import (one file per resolution)."""
from __future__ import annotations

import math
import os
import time
from typing import Any, Iterable

from ..device import DeviceProfile
from ..errors import FormatError
from ..measure import Measurement, Stats
from ..store import LatencyTable, PathLike, _nan
from .common import Transfer, use_profile


def _ofa_entry(row: dict[str, Any]) -> dict[str, Any]:
    mean = row["mean"] if row["mean"] is not None else row["estimate"]
    return {"count": row["n"], "mean": mean, "std": row["std"]}


def export_ofa_yaml(table: LatencyTable, out: PathLike, skip_unsupported: bool = False) -> Transfer:
    """ok rows with OFA keys as OFA LatencyTable YAML, so OFA's own tools can use the numbers."""
    # `out` a directory (existing, or not ending in .yaml/.yml): one {r}_lookup_table.yaml per
    # resolution in each row's extra["resolutions"]; `out` a file: every row in it. `mean` is the
    # row's mean, or its estimate when the source gave no mean; count and std only when known.
    from ..formats.ofa import is_ofa_key, table_file_name, write_ofa_yaml

    o = os.fspath(out)
    to_dir = os.path.isdir(o) or not o.lower().endswith((".yaml", ".yml"))
    res = Transfer(not_ok=table.counts()["failed"])
    per_res: dict[int, dict[str, dict[str, Any]]] = {}
    flat: dict[str, dict[str, Any]] = {}
    for r in table.rows(status="ok"):
        key = r["key"]
        if not is_ofa_key(key):
            if not skip_unsupported:
                raise FormatError(f"{table.path}: {key} is not a Once-for-All block key, which OFA "
                                  f"YAML cannot hold (--skip-unsupported leaves such rows out)")
            res.skipped.append(key)
            continue
        entry = _ofa_entry(r)
        if not to_dir:
            flat[key] = entry
            continue
        resolutions = (r["extra"] or {}).get("resolutions") or []
        if not resolutions:
            if not skip_unsupported:
                raise FormatError(f"{table.path}: {key} has no resolutions recorded (extra "
                                  f"['resolutions']), so it belongs to no {{r}}_lookup_table.yaml; "
                                  f"export to one .yaml file instead, or --skip-unsupported")
            res.skipped.append(key)
            continue
        alt = (r["extra"] or {}).get("ofa_by_resolution") or {}
        for rr in resolutions:
            per_res.setdefault(int(rr), {})[key] = alt.get(str(rr), entry)
    try:
        if to_dir:
            os.makedirs(o, exist_ok=True)
            for rr in sorted(per_res):
                f = os.path.join(o, table_file_name(rr))
                write_ofa_yaml(per_res[rr], f)
                res.files.append(f)
            res.written = len({k for d in per_res.values() for k in d})
        else:
            res.written = write_ofa_yaml(flat, o)
            res.files.append(o)
    except OSError as e:
        raise FormatError(f"{o}: cannot write: {e.strerror or e}") from None
    return res


def import_ofa_yaml(paths: PathLike | Iterable[PathLike], table: LatencyTable,
                    profile: DeviceProfile | None = None) -> Transfer:
    """OFA LatencyTable YAML files into `table` with estimator `mean`, so lookups match OFA's own."""
    # count/std kept, median and IQR NULL. A {r}_lookup_table.yaml name records r in
    # extra["resolutions"]; a key in several files (or already imported from OFA YAML) keeps its
    # first numbers, gains the other resolutions, and keeps differing per-resolution numbers in
    # extra["ofa_by_resolution"] so a directory export gives each file back.
    from ..formats.ofa import parse_ofa_key, read_ofa_yaml, resolution_of

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    prof = use_profile(table, profile, ", ".join(paths))
    now = time.time()
    acc: dict[str, dict[str, Any]] = {}
    for p in paths:
        entries = read_ofa_yaml(p)
        r = resolution_of(p)
        source = f"ofa-yaml:{os.path.basename(p)}"
        for key, e in entries.items():
            try:
                op = parse_ofa_key(key)
            except FormatError as err:
                raise FormatError(f"{p}: {err}") from None
            if key not in acc:
                old = table.row(key)
                if old is not None and str(old["source"]).startswith("ofa-yaml:") and old["status"] == "ok":
                    acc[key] = old
                else:
                    stats = Stats(median=math.nan, p25=math.nan, p75=math.nan, min=math.nan,
                                  max=math.nan, mean=e["mean"], std=_nan(e["std"]),
                                  n=e["count"] or 0, block=0)
                    m = Measurement(key=key, profile_id=prof.id, op=op.to_dict(), stats=stats,
                                    taken_at=now, extra={})
                    acc[key] = table._measurement_row(m, source, "mean", e["mean"])
            row = acc[key]
            if r is None:
                continue
            extra = row["extra"]
            rs = set(extra.get("resolutions") or [])
            first = not rs and not extra.get("ofa_by_resolution")
            rs.add(r)
            extra["resolutions"] = sorted(rs)
            if not first:
                main = {"count": row["n"], "mean": row["mean"], "std": row["std"]}
                if e != main:
                    extra.setdefault("ofa_by_resolution", {})[str(r)] = e
    table._put_rows(list(acc.values()))
    return Transfer(written=len(acc), files=paths)


