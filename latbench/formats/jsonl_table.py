"""JSON Lines export and import: one self-contained file, lossless like CSV.

Line 1 is a header record {"format": "latbench-table-jsonl", "version", "profile", "meta",
"columns"}; every further line is one row with every column (JSON columns as JSON values, NULL as
null). Floats are written as the shortest text that reads back to the same float.
"""
from __future__ import annotations

import json
import os
from typing import Any

from ..device import DeviceProfile
from ..errors import FormatError
from ..merge import Transfer, take_meta
from ..store import COLUMNS, LatencyTable, PathLike
from .table_common import check_header, check_row, header_profile, table_header, typed_value, use_profile

JSONL_FORMAT_NAME = "latbench-table-jsonl"


def export_jsonl(table: LatencyTable, path: PathLike) -> Transfer:
    """The header record, then every row (failed rows too) with every column, one JSON per line."""
    p = os.fspath(path)
    lines = [_json_line(table_header(table, JSONL_FORMAT_NAME), f"{table.path}: meta")]
    for r in table.rows():
        lines.append(_json_line({c: r[c] for c in COLUMNS}, f"{table.path}: row {r['key']}"))
    try:
        with open(p, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
    except OSError as e:
        raise FormatError(f"{p}: cannot write: {e.strerror or e}") from None
    return Transfer(written=len(lines) - 1, files=[p])


def _json_line(obj: dict[str, Any], what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=False)
    except ValueError:
        raise FormatError(f"{what} holds a NaN or infinity, which JSON cannot: export it with "
                          f"--format csv") from None


def import_jsonl(path: PathLike, out_table: LatencyTable, profile: DeviceProfile | None = None) -> Transfer:
    """Rows of a JSONL export into `out_table`, losslessly, under the profile its header names;
    its meta is taken in as a merge takes it."""
    p = os.fspath(path)
    records = _records(p)
    if not records:
        raise FormatError(f"{p}: empty file (a latbench JSONL table starts with a header line)")
    (first, header), rows_in = records[0], records[1:]
    check_header(header, JSONL_FORMAT_NAME, f"{p}:{first}")
    prof = use_profile(out_table, header_profile(header, f"{p}:{first}", p, profile), p)
    source = f"jsonl:{os.path.basename(p)}"
    rows: dict[str, dict[str, Any]] = {}
    for lineno, rec in rows_in:
        where = f"{p}:{lineno}"
        if not isinstance(rec, dict):
            raise FormatError(f"{where}: a row must be a JSON object")
        unknown = sorted(set(rec) - set(COLUMNS))
        if unknown:
            raise FormatError(f"{where}: unknown column(s) {', '.join(unknown)}")
        raw = {c: typed_value(c, v, where) for c, v in rec.items()}
        row = check_row(raw, where, prof, source)
        rows[row["key"]] = row
    take_meta(out_table, header.get("meta") or {}, p, header["version"])
    out_table.put_rows(list(rows.values()))
    return Transfer(written=len(rows), files=[p])


def _records(p: str) -> list[tuple[int, Any]]:
    """(line number, JSON value) of each non-blank line."""
    try:
        with open(p, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{p}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line)))
        except ValueError as e:
            raise FormatError(f"{p}:{lineno}: not JSON: {e}") from None
    return out
