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

from .device import DeviceProfile
from .errors import UsageError
from .merge import Transfer, copy_missing_meta, open_sources
from .store import LatencyTable, PathLike
from .tablemeta import RUN_META, RunSettings

COMBINED_AGENT = "combined"  # the agent of a profile that combines other profiles' rows


def source_profiles(profile: DeviceProfile) -> list[DeviceProfile]:
    """The device profiles whose rows a table of `profile` holds: a combination's sources, else itself."""
    if profile.agent != COMBINED_AGENT:
        return [profile]
    return [DeviceProfile.from_dict(d) for d in profile.info.get("sources", [])]


def row_profile_ids(profile: DeviceProfile) -> set[str]:
    """The profile ids a row of a table of `profile` may carry."""
    return {profile.id} | {p.id for p in source_profiles(profile)}


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
        out.set_run_settings(run)
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


def _run_of(sources: list[LatencyTable]) -> RunSettings:
    """The run settings of the combination: the sources' granularity and fusion (refused when they
    differ: a table prices at one), their spaces, and their cache context where they share one."""
    first, want = sources[0], _pricing(sources[0])
    runs = [s.run_settings for s in sources]
    for s in sources[1:]:
        got = _pricing(s)
        if got != want:
            raise UsageError(f"cannot combine {s.path} with {first.path}: its entries are "
                             f"{got[0]}-granularity (fusion {got[1]}), {first.path}'s "
                             f"{want[0]}-granularity (fusion {want[1]}); a table prices at one")
    contexts = {(r.context, r.context_bytes) if r else (None, None) for r in runs}
    context, context_bytes = contexts.pop() if len(contexts) == 1 else (None, None)
    return RunSettings(want[0], want[1], tuple(sorted({sp for r in runs if r for sp in r.spaces})),
                       context, context_bytes if context is not None else None)


def _pricing(table: LatencyTable) -> tuple[str, str]:
    """(granularity, fusion) the table is priced at."""
    from .predict import Pricer

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
    out.put_rows(list(rows.values()))
    res.added = res.written = len(rows)
    res.left = len(later)  # keys a later source offered that an earlier source gave
    taken = {s.path: 0 for s in sources}
    for path in origin.values():
        taken[path] += 1
    return taken


def _take_meta(out: LatencyTable, sources: list[LatencyTable], taken: dict[str, int], res: Transfer) -> None:
    """The sources' meta but their calibrations, the first per-call cost, and meta "combination"
    naming each source; what the summary must say goes into res.notes."""
    entries, invocations = [], {}
    for s in sources:
        inv = invocations[s.path] = s.invocation
        entries.append({"path": s.path, "profile_id": s.profile.id, "rows": taken[s.path],  # type: ignore[union-attr]
                        "invocation_ms": inv.estimate_ms if inv else None,
                        "profile_run": s.meta_get(RUN_META)})
        copy_missing_meta(out, s.meta(), leave=("calibration", "combination", "invocation"))
        res.notes.append(f"{s.path}: {taken[s.path]} rows")
    priced = next((e for e in entries if e["invocation_ms"] is not None), None)
    out.meta_set("combination", {"sources": entries, "invocation_from": priced["path"] if priced else None})
    if priced:
        out.set_invocation(invocations[priced["path"]])  # type: ignore[arg-type]
        others = [f"{e['path']} {e['invocation_ms']:.6g} ms" for e in entries
                  if e is not priced and e["invocation_ms"] is not None and e["invocation_ms"] != priced["invocation_ms"]]
        res.notes.append(f"priced with the per-call cost of {priced['path']} ({priced['invocation_ms']:.6g} ms)"
                         + (f"; other sources measured {', '.join(others)}" if others else ""))
    dropped = [s.path for s in sources if s.calibrations()]
    if dropped:
        res.notes.append(f"calibrations of {', '.join(dropped)} not carried (each fits one device's table)")


__all__ = ["COMBINED_AGENT", "combine", "combined_profile", "source_profiles", "row_profile_ids"]
