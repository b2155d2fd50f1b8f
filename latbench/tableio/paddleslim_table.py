"""PaddleSlim LightNAS latency-table text: export of op rows, import with estimator `value`."""
from __future__ import annotations

import math
import os
import time
from typing import Any

from ..device import DeviceProfile
from ..errors import FormatError
from ..measure import Measurement
from ..ops import OpSpec
from ..store import LatencyTable, PathLike
from .common import Transfer, use_profile


def export_paddleslim(table: LatencyTable, path: PathLike, skip_unsupported: bool = False) -> Transfer:
    """ok rows as PaddleSlim latency-table lines (op line + estimate in ms) for LightNAS tools."""
    # a row PaddleSlim has no line for (blocks, OFA layers, conv+BN) is an error naming its key,
    # or skipped and counted with skip_unsupported
    from ..formats.paddleslim import op_to_line, write_table

    p = os.fspath(path)
    res = Transfer(not_ok=table.counts()["failed"], files=[p])
    rows: list[tuple[OpSpec, float]] = []
    for r in table.rows(status="ok"):
        op = OpSpec.from_dict(r["op"])
        try:
            op_to_line(op)
        except FormatError as e:
            if not skip_unsupported:
                raise FormatError(f"{table.path}: cannot export {r['key']} as PaddleSlim text: {e} "
                                  f"(--skip-unsupported leaves such rows out)") from None
            res.skipped.append(r["key"])
            continue
        rows.append((op, r["estimate"]))
    try:
        res.written = write_table(rows, p)
    except OSError as e:
        raise FormatError(f"{p}: cannot write: {e.strerror or e}") from None
    return res


def import_paddleslim(path: PathLike, table: LatencyTable, profile: DeviceProfile | None = None) -> Transfer:
    """A PaddleSlim latency table into `table` with estimator `value` and no invented statistics."""
    # a key listed twice keeps its last line
    from ..formats.paddleslim import read_table as read_paddle

    p = os.fspath(path)
    prof = use_profile(table, profile, p)
    rows = read_paddle(p)
    source = f"paddleslim:{os.path.basename(p)}"
    now = time.time()
    by_key: dict[str, dict[str, Any]] = {}
    for op, ms in rows:
        if not math.isfinite(ms) or ms < 0:
            raise FormatError(f"{p}: latency of {op.key} must be a finite number >= 0, got {ms!r}")
        m = Measurement(key=op.key, profile_id=prof.id, op=op.to_dict(), stats=None, taken_at=now)
        by_key[op.key] = table._measurement_row(m, source, "value", ms)
    table._put_rows(list(by_key.values()))
    return Transfer(written=len(by_key), files=[p])


