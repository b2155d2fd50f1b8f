"""PaddleSlim LightNAS latency-table text: one op line + estimate per ok row, and a
`<file>.meta.json` sidecar beside it with what the text cannot hold.

PaddleSlim's own loader reads every line as `tuple(fields[:-1]) -> float(fields[-1])`, so the text
holds no comment or meta. The sidecar holds the profile and the table's meta (run settings with
granularity and fusion, the per-call cost, calibrations) and what each row holds besides its
number (its `extra`: the resolutions a key belongs to...; the source profile of a combination's
row): a latbench export then import prices every subnet exactly as the table did. A PaddleSlim file without a sidecar is a foreign table (estimator `value`, --device needed).

Where the table measured a per-call cost, each line holds the op's own work, max(0, estimate -
cost), so PaddleSlim's plain sum over a network is latbench's price less the one cost; the sidecar
keeps the cost (`per_call_ms`) and the estimate of each row that work + cost does not give back
bit for bit (a row below the cost), so the import with it restores every estimate.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

from ..device import DeviceProfile
from ..errors import FormatError
from ..measure import Measurement
from ..ops import OpSpec
from ..merge import Transfer, take_meta
from ..runmeta import entry_work, invocation_ms
from ..store import LatencyTable, PathLike
from .table_common import header_profile, profile_ids, read_sidecar, table_header, use_profile, write_sidecar

PADDLESLIM_SIDECAR_FORMAT = "latbench-table-paddleslim"
_KEEPS_ALL = "--format csv|jsonl keep every row"


def paddleslim_meta_path(path: PathLike) -> str:
    """The sidecar of a PaddleSlim export (`x.txt` -> `x.txt.meta.json`)."""
    return os.fspath(path) + ".meta.json"


def export_paddleslim(table: LatencyTable, path: PathLike, skip_unsupported: bool = False) -> Transfer:
    """ok rows as PaddleSlim latency-table lines (op line + work in ms: estimate - per-call cost,
    at least 0) for LightNAS tools, and the sidecar that makes a latbench round trip exact."""
    # a row PaddleSlim has no line for (blocks, OFA layers, conv+BN), or whose line would read
    # back as another op, is an error naming its key, or skipped and counted with skip_unsupported
    from .paddleslim import write_table

    p = os.fspath(path)
    res = Transfer(not_ok=table.counts()["failed"], files=[p, paddleslim_meta_path(p)])
    rows: list[tuple[OpSpec, float]] = []
    kept: dict[str, dict[str, Any]] = {}  # what a row holds besides its line and number
    own = profile_ids(table.profile)[0] if table.profile is not None else None
    inv = invocation_ms(table)
    for r in table.rows(status="ok"):
        op = OpSpec.from_dict(r["op"])
        why = _no_line(op)
        if why:
            if not skip_unsupported:
                raise FormatError(f"{table.path}: cannot export {r['key']} as PaddleSlim text: {why} "
                                  f"(--skip-unsupported leaves such rows out)")
            res.skipped.append(r["key"])
            continue
        work = entry_work(r["estimate"], inv)
        rows.append((op, work))
        keep = {"extra": r["extra"]} if r["extra"] else {}
        if work + inv != r["estimate"]:
            keep["estimate"] = r["estimate"]
        if own is not None and r["profile_id"] != own:
            keep["profile_id"] = r["profile_id"]
        if keep:
            kept[r["key"]] = keep
    try:
        res.written = write_table(rows, p)
    except OSError as e:
        raise FormatError(f"{p}: cannot write: {e.strerror or e}") from None
    write_sidecar(paddleslim_meta_path(p), {**table_header(table, PADDLESLIM_SIDECAR_FORMAT),
                                            "per_call_ms": inv, "rows": kept})
    if inv > 0:
        res.notes.append(f"per-call cost {inv!r} ms: each line holds estimate - cost (at least 0), so "
                         f"PaddleSlim's sum over a network is latbench's price less the cost; the sidecar "
                         f"restores the estimates")
    return res


def _no_line(op: OpSpec) -> str:
    """Why `op` cannot be a PaddleSlim line that reads back as itself ('' when it can)."""
    from .paddleslim import line_to_op, op_to_line

    try:
        line = op_to_line(op, hint=_KEEPS_ALL)
    except FormatError as e:
        return str(e)
    back = line_to_op(line)
    if back.key != op.key:
        return f"its line {line!r} reads back as another op ({back.key}); {_KEEPS_ALL}"
    return ""


def import_paddleslim(path: PathLike, table: LatencyTable, profile: DeviceProfile | None = None) -> Transfer:
    """A PaddleSlim latency table into `table` with estimator `value` and no invented statistics;
    with its latbench sidecar, under the sidecar's profile and meta, with each row's extra and
    estimate (the line's work + the per-call cost the export took off it)."""
    from .paddleslim import read_table as read_paddle

    p = os.fspath(path)
    side_path = paddleslim_meta_path(p)
    side = read_sidecar(side_path, PADDLESLIM_SIDECAR_FORMAT)
    prof = use_profile(table, header_profile(side, side_path, p, profile), p)
    rows = read_paddle(p)
    kept = (side or {}).get("rows") or {}
    if not isinstance(kept, dict):
        raise FormatError(f"{side_path}: rows must map keys to JSON objects")
    inv = (side or {}).get("per_call_ms", 0.0)  # sidecars from before it was taken off: none
    if not _ms(inv):
        raise FormatError(f"{side_path}: per_call_ms must be a finite number >= 0 (ms), got {inv!r}")
    source = f"paddleslim:{os.path.basename(p)}"
    now = time.time()
    by_key: dict[str, dict[str, Any]] = {}
    own = profile_ids(prof)[0]
    for op, work in rows:
        keep = _kept(kept.get(op.key), prof, f"{side_path}: row {op.key}")
        # the sidecar's estimate where the line still holds the work it gives (else the line was edited)
        ms = keep["estimate"] if "estimate" in keep and entry_work(keep["estimate"], inv) == work else work + inv
        m = Measurement(key=op.key, profile_id=own, op=op.to_dict(), stats=None, taken_at=now,
                        extra=keep.get("extra", {}))
        row = table.measurement_row(m, source, "value", ms)
        row["profile_id"] = keep.get("profile_id", own)
        by_key[op.key] = row
    if side:
        take_meta(table, side.get("meta") or {}, p, side["version"])
    table.put_rows(list(by_key.values()))
    return Transfer(written=len(by_key), files=[p] + ([side_path] if side else []))


def _kept(keep: Any, prof: DeviceProfile, where: str) -> dict[str, Any]:
    """A row's entry of the sidecar, checked: {"extra": object, "profile_id": a source of `prof`,
    "estimate": ms}."""
    keep = keep or {}
    if not isinstance(keep, dict) or not isinstance(keep.get("extra", {}), dict):
        raise FormatError(f"{where}: must be a JSON object whose extra is a JSON object")
    if "estimate" in keep and not _ms(keep["estimate"]):
        raise FormatError(f"{where}: estimate must be a finite number >= 0 (ms), got {keep['estimate']!r}")
    if "profile_id" in keep and keep["profile_id"] not in profile_ids(prof)[1]:
        raise FormatError(f"{where}: profile {keep['profile_id']!r} is not a source of {prof.describe()}")
    return keep


def _ms(v: Any) -> bool:
    """A finite number >= 0 (a JSON number, not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
