"""A deliberate combination of several devices' tables in a NEW table that names its sources.

One table holds one device profile; `merge` refuses another. A combination is a table of its own:
its profile (agent `combined`) names each source profile (their ids are hashed into its id, the
full profiles sit in its info), every row keeps the profile id of the device that measured it,
and meta "combination" says which source gave how many rows. Sources come in order of
preference: a key comes from the first source holding an ok row of it. Predict and search price
a combination like any table: its granularity and fusion are the sources' (which must agree), its
per-call cost the first source's that has one (the summary says so, and names the others), and a
calibration fitted on one device is not carried.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Iterable

from ..device import DeviceProfile
from ..errors import UsageError
from ..store import LatencyTable, PathLike
from .common import COMBINED_AGENT, Transfer, copy_missing_meta, source_profiles
from .merge import open_sources

RUN_CONTEXT = ("context", "context_bytes")


def combined_profile(profiles: list[DeviceProfile]) -> DeviceProfile:
    """The profile of a combination of `profiles` (in order of preference)."""

    def joined(field: str, sep: str = "+") -> str:
        return sep.join(dict.fromkeys(str(getattr(p, field)) or "?" for p in profiles))

    return DeviceProfile(agent=COMBINED_AGENT, runtime=joined("runtime"),
                         runtime_version=joined("runtime_version"), threads=0,
                         delegate=joined("delegate"), device=joined("device", " + "),
                         options=(("sources", ",".join(p.id for p in profiles)),),
                         info={"sources": [p.to_dict() for p in profiles]})


def combine(out: LatencyTable, srcs: Iterable[LatencyTable | PathLike]) -> Transfer:
    """Fill the new, empty table `out` with the rows of tables of several device profiles."""
    if out.profile is not None or len(out):
        raise UsageError(f"{out.path} is not a new table: a combination goes into a table of its own")
    with ExitStack() as stack:
        sources = [s for s in open_sources(stack, srcs, out.path) if s.profile is not None]
        profiles = _leaf_profiles(sources)
        if len(profiles) < 2:
            raise UsageError(f"{', '.join(s.path for s in sources) or 'the sources'} hold one device "
                             f"profile: `latbench table merge` puts them into one table")
        run = _run_of(sources)
        out.set_profile(combined_profile(profiles))
        out.meta_set("profile_run", run)
        res = Transfer(files=[s.path for s in sources])
        taken = _take_rows(out, sources, res)
        _take_meta(out, sources, taken, res)
    return res


def _leaf_profiles(sources: list[LatencyTable]) -> list[DeviceProfile]:
    """The device profiles of the sources' rows, first seen first (a combination gives its own)."""
    seen: dict[str, DeviceProfile] = {}
    for s in sources:
        for p in source_profiles(s.profile):  # type: ignore[arg-type]
            seen.setdefault(p.id, p)
    return list(seen.values())


def _run_of(sources: list[LatencyTable]) -> dict[str, Any]:
    """The run settings of the combination: the sources' granularity and fusion (refused when they
    differ: a table prices at one), their spaces, and their cache context where they share one."""
    first, want = sources[0], _pricing(sources[0])
    runs = [s.meta_get("profile_run") or {} for s in sources]
    for s in sources[1:]:
        got = _pricing(s)
        if got != want:
            raise UsageError(f"cannot combine {s.path} with {first.path}: its entries are "
                             f"{got[0]}-granularity (fusion {got[1]}), {first.path}'s "
                             f"{want[0]}-granularity (fusion {want[1]}); a table prices at one")
    run: dict[str, Any] = {"granularity": want[0], "fusion": want[1],
                           "spaces": sorted({sp for r in runs for sp in r.get("spaces", [])})}
    contexts = {tuple(r.get(k) for k in RUN_CONTEXT) for r in runs}
    if len(contexts) == 1 and None not in next(iter(contexts)):
        run.update(zip(RUN_CONTEXT, contexts.pop()))
    return run


def _pricing(table: LatencyTable) -> tuple[str, str]:
    """(granularity, fusion) the table is priced at."""
    from ..predict import Pricer

    p = Pricer.from_table(table)
    return p.granularity, p.fusion


def _take_rows(out: LatencyTable, sources: list[LatencyTable], res: Transfer) -> dict[str, int]:
    """Each key's row from the first source with an ok row of it (else its first failed row);
    every row keeps the profile id it was measured under. Returns rows taken per source path."""
    rows: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}
    later: set[str] = set()
    for s in sources:
        for r in s.rows():
            have = rows.get(r["key"])
            if have is not None and not (have["status"] != "ok" and r["status"] == "ok"):
                later.add(r["key"])
                continue
            rows[r["key"]], origin[r["key"]] = r, s.path
    out._put_rows(list(rows.values()))
    res.added = res.written = len(rows)
    res.left = len(later)  # keys a later source offered that an earlier source gave
    taken = {s.path: 0 for s in sources}
    for path in origin.values():
        taken[path] += 1
    return taken


def _take_meta(out: LatencyTable, sources: list[LatencyTable], taken: dict[str, int], res: Transfer) -> None:
    """The sources' meta but their calibrations, the first per-call cost, and meta "combination"
    naming each source; what the summary must say goes into res.notes."""
    from ..profiling import invocation_entry

    entries, invocations = [], {}
    for s in sources:
        inv = invocations[s.path] = invocation_entry(s)
        entries.append({"path": s.path, "profile_id": s.profile.id, "rows": taken[s.path],  # type: ignore[union-attr]
                        "invocation_ms": inv["estimate_ms"] if inv else None,
                        "profile_run": s.meta_get("profile_run")})
        copy_missing_meta(out, s.meta(), leave=("calibration", "combination", "invocation"))
        res.notes.append(f"{s.path}: {taken[s.path]} rows")
    priced = next((e for e in entries if e["invocation_ms"] is not None), None)
    out.meta_set("combination", {"sources": entries, "invocation_from": priced["path"] if priced else None})
    if priced:
        out.meta_set("invocation", invocations[priced["path"]])
        others = [f"{e['path']} {e['invocation_ms']:.6g} ms" for e in entries
                  if e is not priced and e["invocation_ms"] is not None and e["invocation_ms"] != priced["invocation_ms"]]
        res.notes.append(f"priced with the per-call cost of {priced['path']} ({priced['invocation_ms']:.6g} ms)"
                         + (f"; other sources measured {', '.join(others)}" if others else ""))
    dropped = [s.path for s in sources if s.meta_get("calibration")]
    if dropped:
        res.notes.append(f"calibrations of {', '.join(dropped)} not carried (each fits one device's table)")
