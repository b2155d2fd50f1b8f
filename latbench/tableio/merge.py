"""Merging tables of one device profile."""
from __future__ import annotations

import os
from typing import Iterable

from ..errors import FormatError, UsageError
from ..profiling import merge_run_meta
from ..store import LatencyTable, PathLike, ProfileMismatchError, mismatch_message
from .common import Transfer, copy_missing_meta


def merge(dst: LatencyTable, srcs: Iterable[LatencyTable | PathLike], force: bool = False) -> Transfer:
    """Copy every row of `srcs` into `dst`, refusing other device profiles unless `force` and rows
    timed in another granularity or cache context always; from sources of its own profile, the
    per-call costs are pooled and the meta entries `dst` lacks (per-call cost, run settings,
    calibration) copied, so a merged table prices subnets as its sources do."""
    # a later source replaces a key, but a failed row never replaces an ok one; with force, dst
    # keeps its profile and each copied row records its source profile id in extra["source_profile"]
    res = Transfer()
    for src in srcs:
        own = not isinstance(src, LatencyTable)
        s = LatencyTable.open(src, create=False) if own else src
        try:
            if os.path.realpath(s.path) == os.path.realpath(dst.path):
                raise UsageError(f"cannot merge {s.path} into itself")
            res.files.append(s.path)
            if s.profile is None:
                if len(s):
                    raise FormatError(f"{s.path}: rows without a device profile")
                continue
            if dst.profile is None:
                dst.set_profile(s.profile)
            foreign = s.profile.id != dst.profile.id  # type: ignore[union-attr]
            if foreign and not force:
                raise ProfileMismatchError(
                    mismatch_message(f"cannot merge {s.path} into {dst.path}", dst.profile, s.profile)  # type: ignore[arg-type]
                    + "; --force merges anyway, recording each row's source profile")
            # refuses rows timed otherwise before any is copied; pools one device's per-call costs
            merge_run_meta(dst, s.meta(), s.path, same_device=not foreign)
            dst_ok = dst.keys("ok")
            rows = []
            for r in s.rows():
                if r["status"] != "ok" and r["key"] in dst_ok:
                    continue
                if foreign:
                    r["extra"] = {**(r["extra"] or {}), "source_profile": (r["extra"] or {}).get(
                        "source_profile", r["profile_id"])}
                    r["profile_id"] = dst.profile.id  # type: ignore[union-attr]
                rows.append(r)
            dst._put_rows(rows)
            if foreign:
                merged = dst.meta_get("merged_profiles", {}) or {}
                merged[s.profile.id] = s.profile.to_dict()
                dst.meta_set("merged_profiles", merged)
            else:  # e.g. the per-call cost and the run settings the rows were priced and taken with
                copy_missing_meta(dst, s.meta())
            res.written += len(rows)
        finally:
            if own:
                s.close()
    return res


