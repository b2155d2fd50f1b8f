"""CSV export and import: every row and column, the profile and meta in a `.meta.json` sidecar."""
from __future__ import annotations

import csv
import json
import os
from typing import Any

from ..device import DeviceProfile
from ..errors import FormatError
from ..merge import Transfer, take_meta
from ..store import (COLUMNS, CSV_FORMAT_NAME, FLOAT_COLUMNS, INT_COLUMNS, JSON_COLUMNS,
                     LatencyTable, PathLike, column_json)
from .table_common import check_row, header_profile, read_sidecar, table_header, use_profile, write_sidecar


def csv_meta_path(path: PathLike) -> str:
    """The JSON sidecar of a CSV export (`x.csv` -> `x.meta.json`): profile and meta entries."""
    p = os.fspath(path)
    return (p[:-4] if p.lower().endswith(".csv") else p) + ".meta.json"


def export_csv(table: LatencyTable, path: PathLike) -> Transfer:
    """Every row and column (failed rows too) as CSV, plus the profile in a `.meta.json` sidecar."""
    p = os.fspath(path)
    rows = list(table.rows())
    try:
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for r in rows:
                w.writerow(["" if r[c] is None else (column_json(r[c]) if c in JSON_COLUMNS else
                            repr(float(r[c])) if c in FLOAT_COLUMNS else r[c]) for c in COLUMNS])
    except OSError as e:
        raise FormatError(f"{p}: cannot write: {e.strerror or e}") from None
    write_sidecar(csv_meta_path(p), table_header(table, CSV_FORMAT_NAME))
    return Transfer(written=len(rows), files=[p, csv_meta_path(p)])


def import_csv(path: PathLike, out_table: LatencyTable, profile: DeviceProfile | None = None) -> Transfer:
    """Rows of a CSV export into `out_table`, losslessly, under the profile its sidecar names."""
    # without a sidecar the profile is `profile` or the table's own; the sidecar's meta is taken
    # in as a merge takes it (run settings checked, per-call costs pooled, missing entries copied)
    p = os.fspath(path)
    side_path = csv_meta_path(p)
    side = read_sidecar(side_path, CSV_FORMAT_NAME)
    prof = use_profile(out_table, header_profile(side, side_path, p, profile), p)
    rows = _read_csv_rows(p, prof)
    if side:
        take_meta(out_table, side.get("meta") or {}, p, side["version"])
    out_table.put_rows(rows)
    return Transfer(written=len(rows), files=[p])


def _read_csv_rows(p: str, profile: DeviceProfile) -> list[dict[str, Any]]:
    try:
        with open(p, newline="", encoding="utf-8") as f:
            records = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{p}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    except csv.Error as e:
        raise FormatError(f"{p}: not a CSV file: {e}") from None
    if not records:
        raise FormatError(f"{p}: empty file (a latbench CSV starts with a header: {','.join(COLUMNS)})")
    header = [h.strip() for h in records[0]]
    unknown = [h for h in header if h not in COLUMNS]
    missing = [c for c in ("key", "op", "estimate") if c not in header]
    if unknown or missing:
        raise FormatError(f"{p}:1: not a latbench table CSV ("
                          + (f"unknown column(s) {', '.join(unknown)}" if unknown else "")
                          + ("; " if unknown and missing else "")
                          + (f"missing column(s) {', '.join(missing)}" if missing else "") + ")")
    source = f"csv:{os.path.basename(p)}"
    out: dict[str, dict[str, Any]] = {}
    for lineno, rec in enumerate(records[1:], 2):
        if not any(x.strip() for x in rec):
            continue
        where = f"{p}:{lineno}"
        if len(rec) != len(header):
            raise FormatError(f"{where}: {len(rec)} fields, the header has {len(header)}")
        raw = {c: _csv_value(c, v, where) for c, v in zip(header, rec)}
        row = check_row(raw, where, profile, source)
        out[row["key"]] = row
    return list(out.values())


def _csv_value(c: str, v: str, where: str) -> Any:
    if v == "":
        return None
    try:
        if c in JSON_COLUMNS:
            return json.loads(v)
        if c in FLOAT_COLUMNS:
            return float(v)
        if c in INT_COLUMNS:
            return int(v)
    except ValueError:
        what = "JSON" if c in JSON_COLUMNS else ("a number" if c in FLOAT_COLUMNS else "an integer")
        shown = v if len(v) <= 60 else v[:57] + "..."
        raise FormatError(f"{where}: column {c}: {shown!r} is not {what}") from None
    return v
