"""Merging tables of one device profile into one (another profile is refused: latbench.combine
makes a new table of several devices that names them), and the Transfer report that merges,
combinations, imports and exports return."""
from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .errors import FormatError, UsageError
from .store import (FORMAT_VERSION, RESERVED_META, LatencyTable, PathLike, ProfileMismatchError,
                    mismatch_message)
from .tablemeta import migrate_meta


@dataclass
class Transfer:
    """What an export, import, merge or combine did (merge and combine count distinct keys)."""

    written: int = 0  # rows written (export) or stored (import, merge, combine)
    skipped: list[str] = field(default_factory=list)  # keys the target format cannot express
    not_ok: int = 0  # failed rows left out (exports carry numbers only)
    files: list[str] = field(default_factory=list)
    added: int = 0  # merge/combine: keys the table did not hold
    replaced: int = 0  # merge/combine: keys whose row a source's row replaced
    left: int = 0  # merge/combine: keys a source offered whose row stayed as it was
    notes: list[str] = field(default_factory=list)  # what a reader of the summary must know

    def describe(self) -> str:
        parts = [f"{self.written} rows"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} unsupported skipped")
        if self.not_ok:
            parts.append(f"{self.not_ok} failed left out")
        return ", ".join(parts)

    def describe_keys(self) -> str:
        """The merge/combine summary: what happened to each distinct key the sources offered."""
        return (f"{self.added} rows added, {self.replaced} replaced, {self.left} left as they were "
                f"(a failed row never replaces an ok one; an identical row changes nothing)")


def open_sources(stack: ExitStack, srcs: Iterable[LatencyTable | PathLike], dst_path: str) -> list[LatencyTable]:
    """Every source table, opened for reading (closed with `stack`); none may be `dst_path` itself,
    and each holding rows names its device profile."""
    out = []
    for src in srcs:
        s = src if isinstance(src, LatencyTable) else stack.enter_context(LatencyTable.open(src, readonly=True))
        if os.path.realpath(s.path) == os.path.realpath(dst_path):
            raise UsageError(f"cannot take the rows of {s.path} into itself")
        if s.profile is None and len(s):
            raise FormatError(f"{s.path}: rows without a device profile")
        out.append(s)
    return out


def merge(dst: LatencyTable, srcs: Iterable[LatencyTable | PathLike]) -> Transfer:
    """Copy every row of `srcs` (tables of `dst`'s device profile) into `dst`: a later source
    replaces a key, but a failed row never replaces an ok one. Rows timed in other run settings
    are refused; the per-call costs are pooled and the meta entries `dst` lacks copied, so the
    merged table prices subnets as its sources do. Counts distinct keys: added, replaced, left."""
    with ExitStack() as stack:
        sources = [s for s in open_sources(stack, srcs, dst.path) if s.profile is not None]
        if dst.profile is None and sources:
            dst.set_profile(sources[0].profile)  # type: ignore[arg-type]
        for s in sources:  # every source's profile before any row is copied
            if s.profile.id != dst.profile.id:  # type: ignore[union-attr]
                raise ProfileMismatchError(
                    mismatch_message(f"cannot merge {s.path} into {dst.path}", dst.profile, s.profile)  # type: ignore[arg-type]
                    + "; one table holds one device profile (`latbench table combine NEW SRC...` "
                    "makes a new table of several devices that names them)")
        before = {r["key"]: r for r in dst.rows()}
        offered: set[str] = set()
        for s in sources:
            take_meta(dst, s.meta(), s.path)  # refuses rows timed otherwise before any is copied
            rows = list(s.rows())
            offered.update(r["key"] for r in rows)
            dst.put_rows(_changes(dst, rows))
        res = Transfer(files=[s.path for s in sources])
    _count(res, dst, before, offered)
    return res


def _changes(dst: LatencyTable, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows that change `dst`: not a failed row over an ok one, nor a row equal to dst's."""
    out = []
    for r in rows:
        have = dst.row(r["key"])
        if have is not None and (have == r or (r["status"] != "ok" and have["status"] == "ok")):
            continue
        out.append(r)
    return out


def _count(res: Transfer, dst: LatencyTable, before: dict[str, dict[str, Any]], offered: set[str]) -> None:
    """What happened to each distinct offered key, from dst's rows before and after."""
    for key in offered:
        if key not in before:
            res.added += 1
        elif dst.row(key) != before[key]:
            res.replaced += 1
        else:
            res.left += 1
    res.written = res.added + res.replaced


# ---------------------------------------------------------------------- meta of a source
def copy_missing_meta(dst: LatencyTable, meta: Mapping[str, Any], leave: tuple[str, ...] = ()) -> None:
    """Copy the meta entries `dst` lacks (a calibration, the per-call cost, the run settings) but
    those in `leave`; what `dst` has already is its own and stays."""
    have = dst.meta()
    for name, value in meta.items():
        if name not in have and name not in RESERVED_META and name not in leave:
            dst.meta_set(name, value)


def take_meta(dst: LatencyTable, meta: Mapping[str, Any], src_name: str, version: int = FORMAT_VERSION) -> None:
    """Take in the meta of a source of `dst`'s own profile before its rows are stored: rows timed
    in other run settings are refused, per-call costs of one context pooled, the entries `dst`
    lacks copied, so `dst` prices the rows as their source did. `version`: the source's format
    version (an export's header), whose meta is migrated first."""
    from .runmeta import merge_run_meta

    meta = {**meta, **migrate_meta(meta, version)}
    merge_run_meta(dst, dict(meta), src_name)
    copy_missing_meta(dst, meta)


__all__ = ["Transfer", "merge", "open_sources", "take_meta", "copy_missing_meta"]
