"""The one profiling entry point, `profile(space_or_ops, device=, out=, ...)` (exported as
`latbench.profile`): which ops to time (`select_ops`), how to time them (latbench's defaults,
`default_timing`; the cache context, `timing_for`), checked against what the table records
(latbench.runmeta), then timed into the table by latbench.profiling.profile_into.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

from . import ops as O
from .errors import UsageError
from .measure import Measurement, TimingSettings, last_level_cache_bytes
from .ops import OpSpec, unique
from .profiling import ProfileRun, check_max_ops, profile_into
from .runmeta import check_run_meta, measure_invocation, table_estimator

EVICT_CAP_BYTES = 64 << 20  # without a readable cache size: reading more evicts nothing more
ROUNDS, INTERLEAVE = 10, 24  # profile defaults where the agent can interleave


def ops_with_resolutions(space, resolutions: Sequence[int] | None, granularity: str,
                         fusion: str = "none") -> tuple[list[OpSpec], dict[str, list[int]]]:
    """Unique ops of a space (blocks, or their ops as `fusion`'s runtime runs them) and, for each
    key, the resolutions whose subnets use it."""
    res = space.check_resolutions(resolutions)
    by_key: dict[str, list[int]] = {}
    found: dict[str, OpSpec] = {}
    for r in res or (None,):
        for block in space.enumerate_blocks([r] if r is not None else None):
            lowered = [block] if granularity == "block" else O.fuse(O.expand(block), fusion)
            for op in lowered:
                if op.key not in found:
                    found[op.key] = op
                if r is not None:
                    rs = by_key.setdefault(op.key, [])
                    if not rs or rs[-1] != r:
                        rs.append(r)
    return list(found.values()), by_key


def network_context_bytes(space=None, context_mb: float | None = None) -> tuple[int, int]:
    """(bytes to read before each timed call, bytes wanted before the cap) for network context:
    `context_mb` if given, else the space's median subnet weights; capped at twice the
    last-level cache (beyond that every cached line is evicted already, only slower)."""
    if context_mb is not None:
        if not (math.isfinite(context_mb) and context_mb >= 0):
            raise UsageError(f"`context_mb` must be a finite number >= 0, got {context_mb:g}")
        want = int(context_mb * (1 << 20))
    elif space is not None:
        want = space.context_bytes()
    else:
        raise UsageError("network context needs a space (its subnets' weight bytes) or `context_mb`")
    llc = last_level_cache_bytes()
    return min(want, 2 * llc if llc else EVICT_CAP_BYTES), want


def timing_for(agent, timing: TimingSettings, context: str, space=None,
               context_mb: float | None = None) -> TimingSettings:
    """`timing` in the cache context asked for (auto = network where the agent can time so and
    the context size is known: a space or `context_mb`; else warm), in interleaved rounds where
    the agent can time so (an agent that cannot is refused rounds > 1 by name)."""
    if context == "auto":
        known = space is not None or context_mb is not None
        context = "network" if known and "network" in getattr(agent, "contexts", ()) else "warm"
    if context not in ("warm", "network"):
        raise UsageError(f"`context` must be auto, warm or network, got {context!r}")
    if context == "warm" and context_mb is not None:
        raise UsageError(f"`context_mb` sizes the network context, and this run times in warm context "
                         f"({agent.name} times in: {', '.join(agent.contexts)}): leave `context_mb` out")
    if context == "warm":
        out = dataclasses.replace(timing, context="warm", context_bytes=0)
    else:
        out = dataclasses.replace(timing, context="network", context_bytes=network_context_bytes(space, context_mb)[0])
    agent.check_timing(out)  # an agent that cannot time so says which settings it lacks
    return out


def default_timing(agent, rounds: int | None = None, interleave: int | None = None, **kw) -> TimingSettings:
    """TimingSettings with latbench's profile defaults: 10 rounds over 24 ops interleaved (spread over
    seconds, so a slow spell of a shared machine hits a round, not an op) where the agent (an
    instance or its class) can."""
    can = getattr(agent, "interleaves", False)
    return TimingSettings(rounds=rounds if rounds is not None else (ROUNDS if can else 1),
                          interleave=interleave if interleave is not None else (INTERLEAVE if can else 1), **kw)


def rows_fusion(source, runtime_fusion: str) -> str:
    """The fusion a profile's rows are stored at: an op-list file's ops as listed ("none": a
    predictor then prices a subnet by those very ops), anything else as the runtime runs it."""
    return "none" if is_op_file(source) else runtime_fusion


def is_op_file(source) -> bool:
    """A path that is an op list rather than a space (a registered name or a YAML file)."""
    import os

    from .spaces import list_spaces

    if isinstance(source, os.PathLike):
        source = os.fspath(source)
        if str(source).endswith((".yaml", ".yml")):
            return False
        return True
    return (isinstance(source, str) and source not in list_spaces() and not source.endswith((".yaml", ".yml"))
            and os.path.isfile(source))


def default_granularity(space_or_ops, ops: Sequence[OpSpec] = ()) -> str:
    """What a row is when not said: a space's blocks, an op list's (or a network's) ops, unless
    the list (`ops`, once read) holds blocks (Once-for-All keys, a space's block keys: an op-level
    list never does, blocks are expanded there)."""
    if not (isinstance(space_or_ops, (list, tuple)) or is_op_file(space_or_ops)):
        return "block"
    return "block" if any(op.kind in O.BLOCK_KINDS for op in ops) else "op"


def select_ops(source, resolutions: Sequence[int] | None = None, granularity: str = "block",
               fusion: str = "none"):
    """(ops, {key: resolutions}, space or None) to profile from `source`: a SearchSpace, a
    registered space name or YAML file (its unique ops at `granularity`, as `fusion`'s runtime
    runs them), an op-list file (PaddleSlim text, CSV, JSONL, keys; taken as listed) or a
    network's OpSpecs in order (at op granularity fused as `fusion`'s runtime runs them, as a
    Predictor prices them). An empty selection is refused, naming where it came from."""
    from .predict import resolve_space

    if source is None:
        raise UsageError("`space_or_ops` is needed: a space, a space name, an op-list file or a list of OpSpecs")
    if isinstance(source, str) or hasattr(source, "positions") or is_op_file(source):
        if is_op_file(source):
            from .formats.oplist import read_any_ops

            if resolutions:
                raise UsageError(f"`resolutions` apply to a space; {source} lists its ops with their shapes")
            ops, res, space = unique(read_any_ops(str(source))), {}, None
            where = f"{source} lists no ops"
        else:
            space = resolve_space(source)
            ops, res = ops_with_resolutions(space, list(resolutions) if resolutions else None, granularity, fusion)
            where = (f"space {space.name} gives no {granularity}s at resolution(s) "
                     f"{', '.join(map(str, resolutions or ())) or 'all'}")
    else:  # a network's ops in order (e.g. lower_torch(...).ops): stored as the runtime runs them
        ops = list(source)
        if any(not isinstance(o, OpSpec) for o in ops):
            raise UsageError("`space_or_ops` must be a space, a space name, an op-list file or OpSpecs")
        ops = unique(O.fuse(ops, fusion) if granularity == "op" else ops)
        if resolutions:
            raise UsageError("`resolutions` apply to a space; a list of OpSpecs holds its ops with their shapes")
        res, space, where = {}, None, "the op list is empty"
    if not ops:
        raise UsageError(f"nothing to profile: {where}")
    return ops, res, space


def checked_run(table, granularity: str, fusion: str, space, timing: TimingSettings, estimator: str | None,
                own_loop: bool) -> TimingSettings:
    """`timing` priced by the table's own estimator where `estimator` was not given (a new table:
    the mean), after the table's run settings were checked or recorded (check_run_meta)."""
    if estimator is None and own_loop:
        timing = dataclasses.replace(timing, estimator=table_estimator(table) or "mean")
    check_run_meta(table, granularity, fusion, space, timing, own_loop)
    return timing


def retime_timing(table, agent, timing: TimingSettings, context: str, context_mb: float | None,
                  estimator: str | None, own_loop: bool) -> TimingSettings:
    """The timing to time `table`'s suspect rows again with: its recorded cache context unless
    `context`/`context_mb` say otherwise (then checked against it), its estimator."""
    run = table.run_settings
    if context == "auto" and context_mb is None and run is not None and run.context:
        context = run.context
        context_mb = (run.context_bytes or 0) / (1 << 20) if context == "network" else None
    timing = timing_for(agent, timing, context, None, context_mb)
    return checked_run(table, run.granularity if run else "block", (run.fusion if run else None) or "none", None,
                       timing, estimator, own_loop)


def profile(space_or_ops=None, *, device, out, resolutions: Sequence[int] | None = None,
            granularity: str | None = None, max_ops: int | None = None, retry_failed: bool = False,
            target_iqr: float = 0.05, max_time_s: float = 2.0, min_samples: int = 10,
            rounds: int | None = None, interleave: int | None = None, context: str = "auto",
            context_mb: float | None = None, estimator: str | None = None, retime: str | None = None,
            timing: TimingSettings | None = None, fusion: str | None = None,
            on_start: Callable[[int], None] | None = None, on_op: Callable[[OpSpec], None] | None = None,
            on_result: Callable[[Measurement], None] | None = None,
            on_retime: Callable[[int], None] | None = None, **agent_options) -> ProfileRun:
    """Measure the ops of `space_or_ops` (a space, its name or YAML file, an op-list file, or
    OpSpecs) on `device` (an agent name such as "ort", with its `agent_options` such as
    threads=1; or an Agent, left open) into the table `out`, committing each op as measured; an
    existing table is resumed. `granularity` (default: block for a space, op for an op list):
    what a row is. Timing: latbench's profile defaults (interleaved rounds where the
    agent can, network cache context with a space, rows priced by the mean; `estimator` and a
    resumed table's own are checked against each other). `space_or_ops` None times the existing
    table's suspect rows again (`retime` "all"). `timing`: TimingSettings used as given instead
    of the timing options; `fusion`: the op fusion rows are stored at (default: the agent's, as
    its runtime runs them). The on_* callbacks report progress (profile_into). Returns the
    ProfileRun; the numbers are in the table."""
    import os

    from .store import LatencyTable

    defaulted = granularity is None  # a space's blocks; an op list's ops (its blocks, when it lists blocks)
    if defaulted:
        granularity = default_granularity(space_or_ops)
    if granularity not in ("op", "block"):
        raise UsageError(f"`granularity` must be op or block, got {granularity!r}")
    check_max_ops(max_ops)
    retime_only = space_or_ops is None
    if retime_only:
        given = [n for n, v in (("resolutions", resolutions), ("max_ops", max_ops),
                                ("retry_failed", retry_failed)) if v]
        if given:
            raise UsageError(f"re-timing the suspect rows of {out} takes no op selection: leave out {', '.join(f'`{n}`' for n in given)}")
        if not os.path.isfile(out):
            raise UsageError(f"re-timing suspect rows needs an existing table; {out} is not one")
    own_agent = isinstance(device, str)
    if own_agent:
        from device_agents import agent_class

        cls = agent_class(device)
    else:
        if agent_options:
            raise UsageError(f"agent options ({', '.join(sorted(agent_options))}) go with a device name; "
                             f"`device` is an agent built already")
        cls = type(device)
    own_loop = bool(getattr(cls, "interleaves", False))  # timed by latbench's loop, priced by timing.estimator
    if estimator is not None and not own_loop:
        raise UsageError(f"`estimator` applies to agents timed by latbench's own loop; {getattr(cls, 'name', device)}'s "
                         f"runner gives its own statistic (benchmark_model: the mean)")
    # bad timing values are refused before the agent touches a device
    fixed = timing is not None  # a TimingSettings used as given, its estimator included
    if fixed and estimator is None and own_loop:
        estimator = timing.estimator
    if not fixed:
        timing = default_timing(cls, target_iqr=target_iqr, max_time_s=max_time_s, min_samples=min_samples,
                                rounds=rounds, interleave=interleave, estimator=estimator or "mean")
    if own_agent:
        from device_agents import get_agent

        agent = get_agent(device, **agent_options)
    else:
        agent = device
    try:
        fusion = fusion or rows_fusion(space_or_ops, getattr(agent, "fusion", "none"))
        if not retime_only:  # a bad selection is refused before a table is made
            ops, res, space = select_ops(space_or_ops, resolutions, granularity, fusion)
            agent.check_ops(ops)
            if defaulted:
                granularity = default_granularity(space_or_ops, ops)
            if not fixed:
                timing = timing_for(agent, timing, context, space, context_mb)
        with LatencyTable.open(os.fspath(out), agent.profile, create=not retime_only) as table:
            if retime_only:
                timing = retime_timing(table, agent, timing, context, context_mb, estimator, own_loop)
                run = profile_into(table, agent, [], timing, retime=retime or "all", on_start=on_start,
                                   on_op=on_op, on_result=on_result, on_retime=on_retime)
            else:
                timing = checked_run(table, granularity, fusion, space.name if space else None, timing,
                                     estimator, own_loop)
                measure_invocation(table, agent, timing, retry_failed)
                run = profile_into(table, agent, ops, timing, max_ops=max_ops, retry_failed=retry_failed,
                                   resolutions=res, retime=retime or "first", on_start=on_start, on_op=on_op,
                                   on_result=on_result, on_retime=on_retime)
            run.invocation = table.invocation  # each batch added a sample; or why it failed
    finally:
        if own_agent:
            agent.close()
    run.table, run.device, run.profile_id = os.fspath(out), device if own_agent else agent.name, agent.profile.id
    run.timing, run.estimator = timing, timing.estimator if own_loop else None
    return run
