"""CSV export and import: every row and column, the profile and meta in a `.meta.json` sidecar."""
from __future__ import annotations

import csv
import json
import os
from typing import Any

from ..device import DeviceProfile
from ..errors import FormatError, OpError
from ..store import (COLUMNS, CSV_FORMAT_NAME, ESTIMATORS, FLOAT_COLUMNS, FORMAT_VERSION,
                     INT_COLUMNS, JSON_COLUMNS, STATUSES, LatencyTable, PathLike,
                     ProfileMismatchError, _dumps, _op_for, mismatch_message)
from .common import Transfer, copy_missing_meta, use_profile


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
                w.writerow(["" if r[c] is None else (_dumps(r[c]) if c in JSON_COLUMNS else
                            repr(float(r[c])) if c in FLOAT_COLUMNS else r[c]) for c in COLUMNS])
        side = {"format": CSV_FORMAT_NAME, "version": FORMAT_VERSION,
                "profile": table.profile.to_dict() if table.profile else None,
                "meta": table.meta(), "columns": list(COLUMNS)}
        with open(csv_meta_path(p), "w", encoding="utf-8") as f:
            json.dump(side, f, indent=2, sort_keys=True)
            f.write("\n")
    except OSError as e:
        raise FormatError(f"{p}: cannot write: {e.strerror or e}") from None
    return Transfer(written=len(rows), files=[p, csv_meta_path(p)])


def _read_sidecar(p: str) -> dict[str, Any] | None:
    side = csv_meta_path(p)
    if not os.path.exists(side):
        return None
    try:
        with open(side, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise FormatError(f"{side}: not a latbench CSV sidecar: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != CSV_FORMAT_NAME:
        raise FormatError(f"{side}: not a latbench CSV sidecar (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    return doc


def import_csv(path: PathLike, out_table: LatencyTable, profile: DeviceProfile | None = None) -> Transfer:
    """Rows of a CSV export into `out_table`, losslessly, under the profile its sidecar names."""
    # without a sidecar the profile is `profile` or the table's own; sidecar meta entries the
    # table lacks (e.g. a calibration) are copied
    p = os.fspath(path)
    side = _read_sidecar(p)
    side_prof = None
    if side and side.get("profile"):
        try:
            side_prof = DeviceProfile.from_dict(side["profile"])
        except (TypeError, ValueError) as e:
            raise FormatError(f"{csv_meta_path(p)}: profile is unreadable: {e}") from None
        if profile is not None and profile.id != side_prof.id:
            raise ProfileMismatchError(mismatch_message(f"{p} (profile of its sidecar)", side_prof, profile))
    prof = use_profile(out_table, side_prof or profile, p)
    rows = _read_csv_rows(p, prof.id)
    out_table._put_rows(rows)
    if side:
        copy_missing_meta(out_table, side.get("meta") or {})
    return Transfer(written=len(rows), files=[p])


def _read_csv_rows(p: str, profile_id: str) -> list[dict[str, Any]]:
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
    name = os.path.basename(p)
    out: dict[str, dict[str, Any]] = {}
    for lineno, rec in enumerate(records[1:], 2):
        if not any(x.strip() for x in rec):
            continue
        where = f"{p}:{lineno}"
        if len(rec) != len(header):
            raise FormatError(f"{where}: {len(rec)} fields, the header has {len(header)}")
        raw = dict(zip(header, rec))
        row: dict[str, Any] = {c: None for c in COLUMNS}
        for c, v in raw.items():
            row[c] = _csv_value(c, v, where)
        key = row["key"]
        if not key:
            raise FormatError(f"{where}: empty key")
        row["status"] = row["status"] or "ok"
        if row["status"] not in STATUSES:
            raise FormatError(f"{where}: status must be ok or failed, got {row['status']!r}")
        row["estimator"] = row["estimator"] or ("value" if "estimator" not in raw else None)
        if row["estimator"] is not None and row["estimator"] not in ESTIMATORS:
            raise FormatError(f"{where}: estimator must be one of {', '.join(ESTIMATORS)}, got {row['estimator']!r}")
        if row["status"] == "ok" and (row["estimate"] is None or row["estimate"] < 0):
            raise FormatError(f"{where}: an ok row of {key!r} needs a non-negative estimate")
        if row["profile_id"] and row["profile_id"] != profile_id:
            raise ProfileMismatchError(f"{where}: row {key!r} belongs to profile {row['profile_id']}, "
                                       f"the table's profile is {profile_id}")
        row["profile_id"] = profile_id
        try:
            op = _op_for(key, row["op"], where)
        except OpError as e:
            raise FormatError(str(e)) from None
        row["kind"] = row["kind"] or op.kind
        row["source"] = row["source"] or f"csv:{name}"
        row["error"] = row["error"] or ""
        for c in ("settings", "extra"):
            row[c] = row[c] if row[c] is not None else {}
            if not isinstance(row[c], dict):
                raise FormatError(f"{where}: column {c} must hold a JSON object")
        out[key] = row
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


