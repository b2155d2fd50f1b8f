"""Once-for-All LatencyTable YAML export and import (one file per resolution).

Import keeps one value per (key, resolution) where the files give different numbers for a key
(latbench.coverage: extra["by_resolution"]), so a config is priced with its own resolution's
file as OFA prices it, whatever the order of the files; the table records the space the files
belong to (given, or inferred from the stem and classifier keys). Export writes the numbers
predictions use, so that OFA's plain sum over a subnet's keys, and latbench after importing the
files back, price every subnet as the table does.
"""
from __future__ import annotations

import collections
import math
import os
import time
from typing import Any, Iterable

from ..coverage import BY_RESOLUTION, SPACE_META, row_values
from ..device import DeviceProfile
from ..errors import FormatError, UsageError
from ..measure import Measurement, Stats
from ..ops import OpSpec
from ..merge import Transfer
from ..runmeta import entry_work, invocation_ms
from ..store import LatencyTable, PathLike
from .table_common import profile_ids, use_profile

Entry = dict[str, Any]  # {"count", "mean", "std"} as read from a file, with its "source"


# ---------------------------------------------------------------------- export
def export_ofa_yaml(table: LatencyTable, out: PathLike, skip_unsupported: bool = False,
                    drop_calibration: bool = False) -> Transfer:
    """ok rows with OFA keys as OFA LatencyTable YAML, so OFA's own tools price as latbench does.

    `out` a directory (existing, or not ending in .yaml/.yml): one {r}_lookup_table.yaml per
    resolution in each row's extra["resolutions"], each key with that resolution's value; `out`
    a file: every row in it. `mean` is the estimate predictions use; where the table measured a
    per-call cost, every entry holds its work, estimate - cost (0 where below), and the stem
    `Conv` one (each subnet has exactly one) that plus the cost, so OFA's sum equals latbench's
    price. A calibration cannot be held: refused
    unless `drop_calibration`. A `#` header in each file says all this."""
    from .ofa import is_ofa_key, table_file_name, write_ofa_yaml

    res = Transfer(not_ok=table.counts()["failed"])
    _check_calibration(table, drop_calibration, res)
    o = os.fspath(out)
    to_dir = os.path.isdir(o) or not o.lower().endswith((".yaml", ".yml"))
    groups: dict[int | None, dict[str, Entry]] = {}
    estimators: collections.Counter = collections.Counter()
    for r in table.rows(status="ok"):
        key = r["key"]
        if not is_ofa_key(key):
            if not skip_unsupported:
                raise FormatError(f"{table.path}: {key} is not a Once-for-All block key, which OFA "
                                  f"YAML cannot hold; csv or jsonl keep it (--skip-unsupported leaves "
                                  f"such rows out)")
            res.skipped.append(key)
            continue
        placed = _place(table, r, to_dir, skip_unsupported)
        if not placed:
            res.skipped.append(key)
            continue
        estimators[r["estimator"]] += 1
        for rr, entry in placed.items():
            groups.setdefault(rr, {})[key] = entry
    inv = invocation_ms(table)
    files = {(os.path.join(o, table_file_name(rr)) if to_dir else o): rr for rr in sorted(groups)}
    docs = {f: _fold(groups[rr], inv, f) for f, rr in files.items()}  # every check before any write
    try:
        if to_dir:
            os.makedirs(o, exist_ok=True)
        for f, rr in files.items():
            write_ofa_yaml(docs[f], f, _header(table, rr, estimators, inv, res.notes))
            res.files.append(f)
    except OSError as e:
        raise FormatError(f"{o}: cannot write: {e.strerror or e}") from None
    res.written = len({k for d in groups.values() for k in d})
    return res


def _check_calibration(table: LatencyTable, drop: bool, res: Transfer) -> None:
    """Refuse a calibrated table (OFA YAML has no place for one) unless asked to drop it."""
    cals = table.calibrations()
    if not cals:
        return
    names = ", ".join(sorted(cals))
    if not drop:
        raise FormatError(f"{table.path}: OFA YAML cannot hold the table's calibration ({names}); csv or "
                          f"jsonl keep it (--drop-calibration leaves it out)")
    res.notes.append(f"calibration {names} left out (OFA YAML cannot hold it): the files give uncalibrated prices")


def _place(table: LatencyTable, r: dict[str, Any], to_dir: bool, skip: bool) -> dict[int | None, Entry]:
    """{resolution (None: the one file): entry} of one row, {} when it is skipped."""
    own = {"estimate": r["estimate"], "count": r["n"], "std": r["std"]}
    per = row_values(r)
    if not to_dir:
        if per:
            raise FormatError(f"{table.path}: {r['key']} has one value per resolution "
                              f"({', '.join(map(str, sorted(per)))}), which one .yaml file cannot hold: "
                              f"export to a directory (one {{r}}_lookup_table.yaml each)")
        return {None: own}
    resolutions = (r["extra"] or {}).get("resolutions") or []
    if not resolutions:
        if not skip:
            raise FormatError(f"{table.path}: {r['key']} has no resolutions recorded (extra "
                              f"['resolutions']), so it belongs to no {{r}}_lookup_table.yaml; "
                              f"export to one .yaml file instead, or --skip-unsupported")
        return {}
    return {int(rr): per.get(int(rr), own) for rr in resolutions}


def _fold(entries: dict[str, Entry], inv: float, path: str) -> dict[str, dict[str, Any]]:
    """OFA entries whose plain sum over a subnet is latbench's price (latbench.predict): each
    entry its work, estimate - per-call cost (0 where below it), but the stem Conv's (every
    subnet has one) its work plus the cost."""
    if inv > 0 and not any(k.startswith("Conv-") for k in entries):
        raise FormatError(f"{path}: no stem Conv entry to keep the per-call cost ({inv:.6g} ms) that every "
                          f"other entry gives up, so OFA's sum would be short of latbench's price; "
                          f"csv or jsonl keep the cost")
    out = {}
    for key, e in entries.items():
        work = entry_work(e["estimate"], inv)
        out[key] = {"count": e.get("count"), "mean": work + inv if key.startswith("Conv-") else work,
                    "std": e.get("std")}
    return out


def _header(table: LatencyTable, r: int | None, estimators: collections.Counter, inv: float,
            notes: list[str]) -> str:
    prof = table.profile.describe() if table.profile else "no profile"
    by = ", ".join(f"{name} ({n} rows)" for name, n in sorted(estimators.items()))
    cost = (f"per-call cost: {inv!r} ms, measured for the table; every entry but the stem Conv one (each "
            f"subnet has exactly one) holds estimate - cost (0 where the estimate is below the cost), the Conv "
            f"entry that plus the cost, so OFA's plain sum over a subnet is latbench's price (the cost once "
            f"and each entry's work)."
            if inv > 0 else "per-call cost: none measured; every entry holds its estimate.")
    lines = [f"Once-for-All LatencyTable{f' for resolution {r}' if r is not None else ''}, exported by "
             f"latbench from {table.path} ({prof}).",
             f"mean: the estimate latbench predicts with, not the arithmetic mean of the samples; "
             f"estimator: {by or 'none'}.",
             cost,
             "count, std: those of the measurement (left out where it gave none)."] + notes
    return "\n".join(lines)


# ---------------------------------------------------------------------- import
def import_ofa_yaml(paths: PathLike | Iterable[PathLike], table: LatencyTable,
                    profile: DeviceProfile | None = None, space: str | None = None) -> Transfer:
    """OFA LatencyTable YAML files into `table` with estimator `mean`, so lookups match OFA's own.

    count/std kept, median and IQR NULL. A {r}_lookup_table.yaml name records r in
    extra["resolutions"]; a key whose entries differ between files keeps each in
    extra["by_resolution"] and the lowest resolution's in its columns, so the order of the files
    changes nothing. Files imported later replace the entries of their resolutions. The space
    (`space`, else inferred from the stem Conv and Logits keys) goes into meta["space"]."""
    from .ofa import parse_ofa_key, read_ofa_yaml, resolution_of

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    files = [(p, resolution_of(p), read_ofa_yaml(p)) for p in paths]
    ops: dict[str, OpSpec] = {}
    found: dict[str, dict[int | None, Entry]] = {}
    for p, r, entries in files:
        for key, e in entries.items():
            if key not in ops:
                try:
                    ops[key] = parse_ofa_key(key)
                except FormatError as err:
                    raise FormatError(f"{p}: {err}") from None
            if r is not None and key.startswith("Conv-input:") and ops[key].in_shape[-1] != r:
                raise FormatError(f"{p}: {key} is the stem of resolution {ops[key].in_shape[-1]}, but the file "
                                  f"is named for resolution {r}")
            _add(found.setdefault(key, {}), r, {**e, "source": os.path.basename(p)}, key)
    record = _space_record(table, ops.values(), space)
    prof = use_profile(table, profile, ", ".join(paths))
    now = time.time()
    rows = [_row(table, prof, key, ops[key], _with_old(table, key, per), now) for key, per in found.items()]
    table.put_rows(rows)
    res = Transfer(written=len(rows), files=paths)
    if record:
        table.meta_set(SPACE_META, record)
        res.notes.append(f"space {record['name']} ({record['how']})")
    else:
        res.notes.append("space not recorded: the stem Conv and Logits keys match no registered ofa-mbv3 "
                         "space (--space NAME records it)")
    return res


def _add(have: dict[int | None, Entry], r: int | None, e: Entry, key: str) -> None:
    """One file's entry of a key; two files of one resolution must agree."""
    old = have.get(r)
    if old is not None and _numbers(old) != _numbers(e):
        what = f"resolution {r}" if r is not None else "no resolution in their names"
        raise FormatError(f"{old['source']} and {e['source']} ({what}) give {key} different numbers "
                          f"({old['mean']!r} and {e['mean']!r} ms): import one of them")
    have[r] = e


def _numbers(e: Entry) -> tuple:
    return e["count"], e["mean"], e["std"]


def _with_old(table: LatencyTable, key: str, new: dict[int | None, Entry]) -> dict[int | None, Entry]:
    """The entries of `key` once `new` lands on the row an earlier OFA import left."""
    old = table.row(key)
    if old is None or old["status"] != "ok" or not str(old["source"]).startswith("ofa-yaml:"):
        return dict(new)
    file = str(old["source"]).removeprefix("ofa-yaml:")
    per: dict[int | None, Entry] = {
        r: {"count": e.get("count"), "mean": e["mean"], "std": e.get("std"),
            "source": str(e.get("source") or file).removeprefix("ofa-yaml:")}
        for r, e in row_values(old).items()}
    if not per:
        own = {"count": old["n"], "mean": old["mean"], "std": old["std"], "source": file}
        per = {int(r): own for r in (old["extra"] or {}).get("resolutions") or []} or {None: own}
    return {**per, **new}


def _row(table: LatencyTable, prof: DeviceProfile, key: str, op: OpSpec, per: dict[int | None, Entry],
         now: float) -> dict[str, Any]:
    """The table row of one key: the lowest resolution's entry (or the one without resolution)
    in its columns, every entry in extra["by_resolution"] when they differ."""
    ints = sorted(r for r in per if r is not None)
    main = per[None] if None in per else per[ints[0]]
    if None in per and any(_numbers(per[r]) != _numbers(main) for r in ints):
        other = next(per[r] for r in ints if _numbers(per[r]) != _numbers(main))
        raise FormatError(f"{main['source']} (no resolution in its name) and {other['source']} give {key} "
                          f"different numbers: name each file {{r}}_lookup_table.yaml")
    extra: dict[str, Any] = {}
    if ints:
        extra["resolutions"] = ints
    if len({_numbers(e) for e in per.values()}) > 1:
        extra[BY_RESOLUTION] = {str(r): {"estimate": per[r]["mean"], "mean": per[r]["mean"],
                                         "count": per[r]["count"], "std": per[r]["std"],
                                         "source": f"ofa-yaml:{per[r]['source']}"} for r in ints}
    stats = Stats(median=math.nan, p25=math.nan, p75=math.nan, min=math.nan, max=math.nan,
                  mean=main["mean"], std=math.nan if main["std"] is None else float(main["std"]), n=main["count"] or 0, block=0)
    m = Measurement(key=key, profile_id=profile_ids(prof)[0], op=op.to_dict(), stats=stats, taken_at=now,
                    extra=extra)
    return table.measurement_row(m, f"ofa-yaml:{main['source']}", "mean", main["mean"])


# ---------------------------------------------------------------------- the space of the files
def _space_record(table: LatencyTable, ops: Iterable[OpSpec], asked: str | None) -> dict[str, str] | None:
    """{"name", "how"} of the OFA space the keys belong to: `asked` (checked against the stem and
    classifier keys), else the one registered space they match; a table recording another
    space refuses."""
    from ..spaces import get_space, list_spaces
    from ..spaces.ofa_mbv3 import OFAMobileNetV3

    stem = {op.out for op in ops if op.role == "Conv"}
    head = {(op.c, op.out) for op in ops if op.role == "Logits"}
    seen = (f"the stem Conv output ({', '.join(map(str, sorted(stem)))} channels)" if stem else "no stem Conv key") + \
        (f" and the Logits input ({', '.join(str(c) for c, _ in sorted(head))})" if head else " and no Logits key")

    def fits(sp) -> bool:
        return stem <= {sp.stem_width} and head <= {(sp.last_channel, sp.n_classes)}

    if asked is not None:
        sp = get_space(asked)
        if not isinstance(sp, OFAMobileNetV3):
            raise UsageError(f"`space` {asked}: OFA YAML holds Once-for-All MobileNetV3 keys; {asked} is not "
                             f"an ofa-mbv3 space")
        if not fits(sp):
            raise UsageError(f"`space` {asked}: the files have {seen}; {asked} has a stem of "
                             f"{sp.stem_width} channels and a Logits input of {sp.last_channel}")
        record = {"name": asked, "how": "given with --space"}
    else:
        names = [n for n in list_spaces("ofa-mbv3-*") if (stem or head) and fits(get_space(n))]
        record = {"name": names[0], "how": f"inferred from {seen}"} if len(names) == 1 else None
    have = table.meta_get(SPACE_META)
    if record is None:
        return have
    if have and have.get("name") != record["name"]:
        raise UsageError(f"{table.path} holds numbers of {have['name']}; these files are {record['name']}'s "
                         f"({record['how']}): import them into another table")
    return record
