"""What every table import and export shares: the profile of foreign numbers, the header (profile +
meta) that CSV sidecars, PaddleSlim sidecars and JSONL files carry, and the check of one imported
row (the Transfer report and the taking in of a source's meta live in latbench.merge)."""
from __future__ import annotations

import functools
import json
import math
import os
from typing import Any, Mapping

from ..combine import row_profile_ids
from ..device import DeviceProfile
from ..errors import FormatError, OpError, UsageError
from ..store import (COLUMNS, ESTIMATORS, FLOAT_COLUMNS, FORMAT_VERSION, INT_COLUMNS, JSON_COLUMNS,
                     STATUSES, LatencyTable, ProfileMismatchError, mismatch_message, op_for_row)


# ---------------------------------------------------------------------- profiles of imports
def import_profile(device: str, runtime: str = "unknown", threads: int = 0, source: str = "") -> DeviceProfile:
    """The profile of imported foreign numbers, so a table still says where they were measured."""
    # `source` goes into info, which is not hashed: files imported from one device share a profile
    if not device or not device.strip():
        raise UsageError("importing a foreign table needs the device it was measured on (`device`)")
    if threads < 0:
        raise UsageError(f"threads must be >= 0 (0 = unknown), got {threads}")
    return DeviceProfile(agent="import", runtime=runtime or "unknown", runtime_version="",
                         threads=int(threads), delegate="cpu", device=device.strip(),
                         info={"source": source} if source else {})


def use_profile(table: LatencyTable, profile: DeviceProfile | None, what: str) -> DeviceProfile:
    if profile is not None:
        table.set_profile(profile)
    if table.profile is None:
        raise UsageError(f"importing {what} into {table.path} needs a device profile: the table has "
                         f"none yet (pass --device NAME, or import_profile(...))")
    return table.profile


# ---------------------------------------------------------------------- headers and sidecars
def table_header(table: LatencyTable, fmt: str) -> dict[str, Any]:
    """What a file needs besides its rows to price as the table does: format, profile and meta."""
    return {"format": fmt, "version": FORMAT_VERSION,
            "profile": table.profile.to_dict() if table.profile else None,
            "meta": table.meta(), "columns": list(COLUMNS)}


def write_sidecar(path: str, header: dict[str, Any]) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(header, f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
    except OSError as e:
        raise FormatError(f"{path}: cannot write: {e.strerror or e}") from None


def read_sidecar(path: str, fmt: str) -> dict[str, Any] | None:
    """The sidecar at `path` written for format `fmt`, or None when there is none."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: not a latbench sidecar: {e}") from None
    check_header(doc, fmt, path)
    return doc


def check_header(doc: Any, fmt: str, where: str) -> None:
    """A header (sidecar or first JSONL line) of format `fmt` that this latbench can read."""
    name = doc.get("format") if isinstance(doc, dict) else None
    if name != fmt:
        raise FormatError(f"{where}: not a {fmt} header (format {name!r})")
    version = doc.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatError(f"{where}: format version {version!r} is newer than this latbench reads "
                          f"(<= {FORMAT_VERSION}); upgrade latbench")
    if not isinstance(doc.get("meta", {}), dict):
        raise FormatError(f"{where}: meta must be a JSON object")


def header_profile(doc: Mapping[str, Any] | None, where: str, data: str,
                   given: DeviceProfile | None) -> DeviceProfile | None:
    """The profile a header names (checked against `given`, the one asked for), else `given`."""
    if not doc or not doc.get("profile"):
        return given
    try:
        prof = DeviceProfile.from_dict(doc["profile"])
    except (TypeError, ValueError) as e:
        raise FormatError(f"{where}: profile is unreadable: {e}") from None
    if given is not None and given.id != prof.id:
        raise ProfileMismatchError(mismatch_message(f"{data} (profile of {where}; it needs no --device)",
                                                    prof, given))
    return prof


# ---------------------------------------------------------------------- one imported row
@functools.lru_cache(maxsize=64)
def profile_ids(profile: DeviceProfile) -> tuple[str, frozenset[str]]:
    """(`profile`'s id, every id a row of a table of it may carry), once per profile: an id
    hashes the whole profile, and imports and exports check it on every row."""
    return profile.id, frozenset(row_profile_ids(profile))


def check_row(raw: Mapping[str, Any], where: str, profile: DeviceProfile, source: str) -> dict[str, Any]:
    """A full table row from the typed values of one imported row (CSV or JSONL), or a
    FormatError naming `where` (file:line) and the column."""
    row: dict[str, Any] = {c: raw.get(c) for c in COLUMNS}
    key = row["key"]
    if not key:
        raise FormatError(f"{where}: empty key")
    for c in FLOAT_COLUMNS:
        if row[c] is not None and not math.isfinite(row[c]):
            raise FormatError(f"{where}: column {c}: {row[c]!r} is not a finite number")
    row["status"] = row["status"] or "ok"
    if row["status"] not in STATUSES:
        raise FormatError(f"{where}: column status: must be ok or failed, got {row['status']!r}")
    row["estimator"] = row["estimator"] or ("value" if "estimator" not in raw else None)
    if row["estimator"] is not None and row["estimator"] not in ESTIMATORS:
        raise FormatError(f"{where}: column estimator: must be one of {', '.join(ESTIMATORS)}, "
                          f"got {row['estimator']!r}")
    if row["status"] == "ok" and (row["estimate"] is None or row["estimate"] < 0):
        raise FormatError(f"{where}: column estimate: an ok row of {key!r} needs a finite estimate "
                          f">= 0 (ms), got {row['estimate']!r}")
    own, allowed = profile_ids(profile)
    if row["profile_id"] and row["profile_id"] not in allowed:
        raise ProfileMismatchError(f"{where}: row {key!r} belongs to profile {row['profile_id']}, "
                                   f"the table's profile is {own}")
    row["profile_id"] = row["profile_id"] or own
    try:
        op = op_for_row(key, row["op"], where)
    except OpError as e:
        raise FormatError(str(e)) from None
    row["kind"] = row["kind"] or op.kind
    row["source"] = row["source"] or source
    row["error"] = row["error"] or ""
    for c in ("settings", "extra"):
        row[c] = row[c] if row[c] is not None else {}
        if not isinstance(row[c], dict):
            raise FormatError(f"{where}: column {c}: must hold a JSON object")
    return row


def typed_value(c: str, v: Any, where: str) -> Any:
    """`v` (a JSON value) checked against the type of column `c`."""
    if v is None:
        return None
    if c in FLOAT_COLUMNS:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        v = float(v) if ok else v
    elif c in INT_COLUMNS:
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif c in JSON_COLUMNS:
        ok = isinstance(v, list) if c == "samples" else isinstance(v, dict)
    else:
        ok = isinstance(v, str)
    if not ok:
        shown = json.dumps(v)
        raise FormatError(f"{where}: column {c}: {shown[:57] + '...' if len(shown) > 60 else shown} "
                          f"is not {_type_words(c)}")
    return v


def _type_words(c: str) -> str:
    if c in FLOAT_COLUMNS:
        return "a number"
    if c in INT_COLUMNS:
        return "an integer"
    if c in JSON_COLUMNS:
        return "a JSON list" if c == "samples" else "a JSON object"
    return "a string"
