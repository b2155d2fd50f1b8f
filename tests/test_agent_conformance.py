"""One conformance suite every device agent passes (optuna's shared storage tests, for agents): the
contract of device_agents/base.py: output against the torch reference, timing, laziness, identity,
failure isolation, rebuilding from a profile or a JSON spec (from_profile/to_spec), prepare_op,
and whole networks (network_model, run_network, prepare_network; time_networks where the runtime
times them on the device: android on the stand-in adb server).

Adding an agent is one line in AGENT_FACTORIES: name -> factory(request, threads=..., seed=...)
returning the agent (the factory may pull other fixtures, e.g. a stand-in adb server, through
`request.getfixturevalue`). Only an agent whose device is absent is skipped, with a warning naming
the reason, so it shows in the summary even without `-rs`; an agent whose module fails to import,
or whose runtime is not installed (MissingExtraError: the dev install has every extra), fails.
An agent named in PROBED is built once at collection instead: absent there (cuda without a GPU),
it is left out of every test and skipped once, by test_probed_agent_present_or_skipped_once.

A measurement's statistics are checked by its estimator: "mean" rows (every local agent, by
default, with sample quantiles; benchmark_model on Android: count/min/max/avg/std, no per-run
times) carry what the runner gave and no invented quantiles; "median" rows carry sample quantiles.
"""
from __future__ import annotations

import json
import math
import re
import time
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import device_agents
from conftest import android_on_standin
from device_agents import Agent, get_agent
from latbench import ops as O
from latbench.device import DeviceProfile
from latbench.errors import DeviceUnavailableError, MissingExtraError, UsageError
from latbench.measure import Measurement, TimingSettings
from latbench.ops import OpSpec
from latbench.yardstick import YardstickSettings

import torch  # the conformance reference; the dev install has it (a missing one fails the suite)

AgentFactory = Callable[..., Agent]


def by_name(name: str) -> AgentFactory:
    """A factory building the registered agent `name` with the suite's threads and seed."""

    def make(request: pytest.FixtureRequest, threads: int = 1, seed: int = 0) -> Agent:
        return get_agent(name, threads=threads, seed=seed)

    return make


# name -> factory; one line per agent
AGENT_FACTORIES: dict[str, AgentFactory] = {
    "cpu": by_name("cpu"),
    "cuda": by_name("cuda"),
    "ort": by_name("ort"),
    "tflite": by_name("tflite"),
    # the stand-in adb server's Pixel (conftest); batch_size=1: the laziness check holds per op as is
    "android": lambda request, **kw: android_on_standin(request.getfixturevalue("server"), batch_size=1, **kw),
}
# agents built once at collection (no fixtures needed, cheap): one absent here is left out of every
# test and reported by one skip with its reason, not one per test
PROBED = ("cuda",)

# short timings keep the suite fast; min_samples is what the statistics checks rely on
FAST = TimingSettings(warmup=1, warmup_s=0.0, min_samples=5, max_samples=30, max_time_s=0.2)
RTOL, ATOL = 1e-4, 1e-4


class AgentSkipped(UserWarning):
    """An agent of the suite could not be built here: its device is absent."""


def _skip(name: str, reason: str) -> None:
    msg = f"agent {name!r} skipped: {reason}"
    warnings.warn(msg, AgentSkipped, stacklevel=2)
    pytest.skip(msg)


def _build(request: pytest.FixtureRequest | None, name: str, **kw: Any) -> Agent | str:
    """The agent from its factory, or why its device is absent here: DeviceUnavailableError (cuda
    without a GPU) or a skip from a fixture that provides the device (the stand-in adb server).
    Anything else propagates and fails the test: an import error in the agent's module, and a
    missing extra (MissingExtraError), since the dev install has every extra."""
    try:
        return AGENT_FACTORIES[name](request, **kw)
    except DeviceUnavailableError as e:
        return f"device unavailable ({e})"
    except pytest.skip.Exception as e:
        return e.msg or "skipped"


def build_agent(request: pytest.FixtureRequest, name: str, **kw: Any) -> Agent:
    """The agent from its factory, or a skip naming why it cannot exist on this machine."""
    got = _build(request, name, **kw)
    if isinstance(got, str):
        _skip(name, got)
    return got


def _absent_here() -> dict[str, str]:
    """name -> why, for the PROBED agents that cannot be built on this machine."""
    absent = {}
    for name in PROBED:
        got = _build(None, name)
        if isinstance(got, str):
            absent[name] = got
        else:
            got.close()
    return absent


ABSENT = _absent_here()


@pytest.fixture(scope="module", params=[name for name in AGENT_FACTORIES if name not in ABSENT])
def agent_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest, agent_name: str) -> Iterator[Agent]:
    """One agent per name for the module (threads=1, seed=0), closed at the end."""
    a = build_agent(request, agent_name)
    yield a
    a.close()


@pytest.fixture
def make_agent(request: pytest.FixtureRequest, agent_name: str) -> Iterator[Callable[..., Agent]]:
    """Build further agents of the same kind with other settings; all closed after the test."""
    made: list[Agent] = []

    def make(**kw: Any) -> Agent:
        made.append(build_agent(request, agent_name, **kw))
        return made[-1]

    yield make
    for a in made:
        a.close()


# ---------------------------------------------------------------------- ops
S = (1, 16, 12, 12)
S_ODD = (1, 8, 13, 13)

OP_LEVEL: list[OpSpec] = [
    O.conv(S, 24, 3, bias=True),
    O.conv(S, 24, 1),
    O.conv(S, 24, 3, stride=2, bias=True),
    O.conv(S_ODD, 16, 5, stride=2, bias=True),
    O.conv(S, 16, 3, groups=16, bias=True),  # depthwise
    O.conv(S, 16, 5, stride=2, groups=16, bias=True),  # depthwise strided
    O.conv(S, 32, 3, groups=4, bias=True),  # grouped
    O.conv(S, 24, 3, dilation=2, bias=True),  # dilated
    *[O.activation(S, a) for a in O.ACTIVATIONS],
    O.batch_norm(S),
    O.pool(S, "max", 3, 2, 1),
    O.pool(S, "max", 2, 2),
    O.pool(S, "avg", 3, 2, 1),  # padding excluded from the divisor
    O.pool(S, "avg", 3, 1, 1, count_pad=True),
    O.pool(S, "avg", 2, 2),
    O.pool(S, "avg", global_pool=True),
    O.pool(S, "max", global_pool=True),
    O.pool(S_ODD, "max", 3, 2, 0, ceil_mode=True),
    O.pool(S, "avg", 3, 2, 0, ceil_mode=True),
    *[O.eltwise(S, e) for e in O.ELTWISE],
    *[O.eltwise(S, e, broadcast=True) for e in O.ELTWISE],
    O.softmax(S, axis=1),
    O.linear(2, 64, 10),
    O.linear(1, 32, 16, bias=False),
    O.shuffle(S, 2),  # channel shuffle (FBNet's g2 blocks)
    O.shuffle(S_ODD, 4),
]

BLOCK_LEVEL: list[OpSpec] = [
    O.conv(S, 24, 3, bn=True, act="relu"),
    O.conv(S, 24, 3, stride=2, bn=True, act="hswish"),
    O.conv(S, 16, 3, groups=16, bn=True, act="relu6"),
    O.mbconv(S, 24, 48, 3, 2, "relu"),  # with expansion conv
    O.mbconv(S, 16, 16, 3, 1, "relu", residual=True, expand_conv=False),  # without
    O.mbconv(S, 16, 64, 5, 1, "hswish", se=16, residual=True),  # SE after the depthwise conv
    O.mbconv(S, 24, 48, 3, 1, "relu", se=8, se_pos="out"),  # SE on the block output (LightNAS)
    O.mbconv(S, 16, 16, 3, 1, "relu", residual=True, groups=2),  # grouped 1x1s + shuffle (FBNet g2)
    O.mbconv(S, 24, 16, 5, 2, "relu", groups=2),
    O.resblock("bottleneck", S, 32, 3, 2, mid=8),  # with projection
    O.resblock("basic", S, 24, 3, 2),  # with projection
    O.resblock("basic", S, 16, 3, 1),  # identity shortcut
]


def _is_block(op: OpSpec) -> bool:
    return op.kind in O.BLOCK_KINDS or len(O.expand(op)) > 1


def _ids(ops: list[OpSpec]) -> list[str]:
    return [op.key for op in ops]


# ---------------------------------------------------------------------- correctness
_REFERENCE: dict[tuple[str, int], np.ndarray] = {}  # (op key, seed) -> the torch reference's output on the test input


@pytest.mark.parametrize("op", OP_LEVEL + BLOCK_LEVEL, ids=_ids(OP_LEVEL + BLOCK_LEVEL))
def test_output_matches_torch_reference(agent: Agent, op: OpSpec) -> None:
    """The agent runs the op we mean to time: same output as the torch reference, same weights."""
    from device_agents.torch_local import reference_module

    granularity = "block" if _is_block(op) else "op"
    if granularity not in agent.granularities:
        pytest.skip(f"agent {agent.name!r} measures {agent.granularities} only, not {granularity}")
    x = np.random.default_rng(1234).standard_normal(op.in_shape, dtype=np.float32)
    shared = type(agent).weights is Agent.weights  # the canonical weights of its seed: one reference for all
    ref = _REFERENCE.get((op.key, agent.seed)) if shared else None
    if ref is None:
        with torch.inference_mode():
            ref = reference_module(op, agent.weights(op))(torch.from_numpy(x)).numpy()
        if shared:
            _REFERENCE[(op.key, agent.seed)] = ref
    out = np.asarray(agent.run(op, x))
    assert out.shape in (ref.shape, op.out_shape), f"output shape {out.shape}, reference {ref.shape}"
    assert np.issubdtype(out.dtype, np.floating)
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=RTOL, atol=ATOL * scale,
                               err_msg=f"{agent.name}: {op.key}")


# ---------------------------------------------------------------------- timing
BIG = O.conv((1, 64, 56, 56), 64, 3)  # ~0.23 GFLOP: milliseconds on one thread anywhere
BIGGER = BIG.replace(out=256)  # 4x the work: a margin no scheduler noise or kernel choice flips


def test_bigger_op_takes_longer(agent: Agent) -> None:
    """Quadrupling a large conv's output channels shows up as clearly more time, not noise.

    Compares the fastest sample of each op over three interleaved rounds: other processes can only
    make a sample slower, so the minimum stays near the op's own cost even on a busy machine,
    where medians of millisecond ops measure the scheduler (seen here at load 6 on 2 cores)."""
    runs = list(agent.measure([BIG, BIGGER] * 3, FAST))
    assert all(m.ok for m in runs), [m.error for m in runs if not m.ok]
    small = min(m.stats.min for m in runs[0::2])
    big = min(m.stats.min for m in runs[1::2])
    medians = [round(m.median_ms, 3) for m in runs]
    assert big > 1.8 * small, f"{agent.name}: {BIGGER.key} {big:.3f} ms vs {BIG.key} {small:.3f} ms (medians {medians})"


HEAVY = O.linear(1, 1280, 1000)  # 5 MB of weights for 2.6 MFLOP: memory-bound once out of cache


def test_network_context_times_weights_cold(agent: Agent) -> None:
    """An agent that times in network context reads its bytes before each call, so a weight-heavy
    op measures slower than back to back (its weights come from memory, not cache); an agent that
    cannot (benchmark_model on a phone) refuses the context by name instead of mislabelling rows."""
    from latbench.errors import UsageError
    from latbench.measure import last_level_cache_bytes

    cold = TimingSettings(**{**FAST.to_dict(), "context": "network",
                             "context_bytes": 2 * (last_level_cache_bytes() or 32 << 20) + (8 << 20)})
    if "network" not in agent.contexts:
        with pytest.raises(UsageError, match=f"{agent.name}: cannot time in 'network' context"):
            list(agent.measure([HEAVY], cold))
        return
    runs = list(agent.measure([HEAVY] * 2, FAST)) + list(agent.measure([HEAVY] * 2, cold))
    assert all(m.ok for m in runs), [m.error for m in runs if not m.ok]
    warm_ms = min(m.median_ms for m in runs[:2])
    cold_ms = min(m.median_ms for m in runs[2:])
    assert all(m.stats.block == 1 and m.settings["timing"]["context"] == "network" for m in runs[2:])
    assert cold_ms > 1.2 * warm_ms, f"{agent.name}: cold {cold_ms:.4f} ms vs warm {warm_ms:.4f} ms"


def _check_measurement(m: Measurement, op: OpSpec, agent: Agent) -> None:
    """An ok measurement of `op` whose statistics, settings and timings hold together.

    Its estimate is the statistic settings["estimator"] names (the table's `estimate`): the mean
    (the default) or the median. A mean row is benchmark_model's count/min/max/avg/std: times in whole
    microseconds, so a sub-microsecond op reads min=0, and quantiles only if the runner gave them."""
    assert m.key == op.key and OpSpec.from_dict(m.op) == op
    assert m.ok and not m.error and m.stats is not None, m.error
    s = m.stats
    estimator = m.settings.get("estimator", "median")
    if estimator == "median":
        assert 0 < s.min <= s.median <= s.max
        assert s.p25 <= s.median <= s.p75
    else:
        assert estimator == "mean", f"{agent.name}: unknown estimator {estimator!r}"
        assert 0 <= s.min <= s.mean <= s.max
        quantiles = (s.p25, s.median, s.p75)
        assert all(map(math.isnan, quantiles)) or s.min <= s.p25 <= s.median <= s.p75 <= s.max, quantiles
    assert FAST.min_samples <= s.n <= FAST.max_samples
    assert s.block >= 1 and s.std >= 0
    # a mean of 0 is benchmark_model's whole-microsecond clock under a sub-microsecond op, and
    # then the row says so; anything else measured takes time
    assert s.mean > 0 or (estimator == "mean" and m.extra.get("runner", {}).get("below_resolution_us") == 1.0)
    assert m.profile_id == agent.profile.id
    p = agent.profile
    assert m.settings["threads"] == agent.threads == p.threads
    assert m.settings["runtime"] == p.runtime and p.runtime
    assert m.settings["runtime_version"] == p.runtime_version and p.runtime_version
    below_resolution = m.extra.get("runner", {}).get("below_resolution_us") == 1.0  # count x mean 0 us
    assert m.wall_s >= m.timed_s and (m.timed_s > 0 or below_resolution)


def test_measure_yields_one_result_per_op_as_each_finishes(agent: Agent) -> None:
    """measure() is lazy: op 2 is not taken before op 1's result is handed over; order is kept."""
    ops = [O.activation(S, "relu"), O.conv(S, 24, 3), O.pool(S, "max", 3, 2, 1)]
    pulled: list[str] = []

    def source() -> Iterator[OpSpec]:
        for op in ops:
            pulled.append(op.key)
            yield op

    it = agent.measure(source(), FAST)
    assert pulled == [], "measure() started work before the first result was asked for"
    got: list[Measurement] = []
    last_received = 0.0
    for i, m in enumerate(it):
        received = time.time()
        assert len(pulled) == i + 1, f"op {i + 2} was taken before result {i + 1} was consumed"
        if got:
            assert m.taken_at >= got[-1].taken_at
            assert m.taken_at >= last_received, "a result was finished before the previous was consumed"
        last_received = received
        got.append(m)
    assert [m.key for m in got] == [op.key for op in ops]
    for m, op in zip(got, ops):
        _check_measurement(m, op, agent)


def test_every_op_kind_is_timed(agent: Agent) -> None:
    """One op of each kind in latbench.ops.OP_KINDS (node ops aside: they are a runtime's own graph
    nodes) is built and timed by every agent; a new kind needs an OP_LEVEL entry to pass."""
    one = {}
    for op in OP_LEVEL:
        one.setdefault(op.kind, op)
    assert set(one) == set(O.OP_KINDS) - {"node"}, "OP_LEVEL lacks an op of some kind"
    ops = list(one.values())
    got = list(agent.measure(ops, FAST))
    assert [m.key for m in got] == [op.key for op in ops]
    for m, op in zip(got, ops):
        _check_measurement(m, op, agent)


# ---------------------------------------------------------------------- identity
def test_fingerprint_stable_and_sensitive_to_threads(make_agent: Callable[..., Agent]) -> None:
    """Same settings give the same profile id (twice, two instances); other threads another one."""
    a, b, c = make_agent(threads=1), make_agent(threads=1), make_agent(threads=2)
    pa = a.fingerprint()
    assert a.fingerprint().id == pa.id == b.fingerprint().id
    assert a.fingerprint() == b.fingerprint()
    assert pa.threads == 1 and pa.agent == a.name and pa.runtime and pa.runtime_version
    pc = c.fingerprint()
    assert pc.threads == 2 and pc.id != pa.id
    assert "threads" in [d.split(":")[0] for d in pa.differences(pc)]
    assert re.fullmatch(r"[0-9a-f]{16}", pa.id)


# ---------------------------------------------------------------------- failure isolation
def test_bad_op_fails_alone_and_the_next_op_runs(agent: Agent) -> None:
    """A valid OpSpec the runtime cannot run yields one 'failed' result; the run goes on."""
    bad, good = O.softmax(S, axis=7), O.softmax(S, axis=1)
    results = list(agent.measure([bad, good], FAST))
    assert [m.key for m in results] == [bad.key, good.key]
    failed, ok = results
    assert failed.status == "failed" and not failed.ok and failed.stats is None
    assert math.isnan(failed.median_ms)
    assert failed.error and "\n" not in failed.error
    assert re.search(r"axis|dim|rank|range|bound|invalid|support", failed.error, re.I), failed.error
    _check_measurement(ok, good, agent)


def test_agent_leaves_no_global_torch_state(make_agent: Callable[..., Agent]) -> None:
    """Threads and grad mode are the caller's again after an agent with other settings worked."""
    before = (torch.get_num_threads(), torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    a = make_agent(threads=2)
    op = O.conv(S, 24, 3)
    for m in a.measure([op], FAST):
        assert (torch.get_num_threads(), torch.is_grad_enabled()) == before[:2]
    a.run(op, np.zeros(op.in_shape, np.float32))
    after = (torch.get_num_threads(), torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    assert after == before


# ---------------------------------------------------------------------- the agent contract
def test_from_profile_and_spec_rebuild_the_same_agent(agent: Agent) -> None:
    """An agent rebuilt from its profile (as a table stores it) or from its JSON spec (as a farm
    sends it) measures under the same profile id, through Agent and through its own class."""
    spec = json.loads(json.dumps(agent.to_spec()))
    assert spec == {"agent": agent.name, "options": agent.opts.to_dict()}
    stored = DeviceProfile.from_dict(json.loads(json.dumps(agent.profile.to_dict())))
    for again in (Agent.from_profile(spec), device_agents.agent_from_profile(stored), type(agent).from_profile(stored)):
        try:
            assert type(again) is type(agent) and again.profile.id == agent.profile.id
        finally:
            again.close()
    with pytest.raises(UsageError, match="unknown option no_such_option"):
        Agent.from_profile({"agent": agent.name, "options": {**spec["options"], "no_such_option": 1}})
    with pytest.raises(UsageError, match="from_profile takes a DeviceProfile or a spec"):
        Agent.from_profile(agent.name)
    other = "cpu" if agent.name != "cpu" else "ort"
    with pytest.raises(UsageError, match=f"a '{other}' profile cannot rebuild a '{agent.name}' agent"):
        type(agent).from_profile({"agent": other, "options": {}})


def test_prepare_op_runs_the_op_or_is_refused_by_name(agent: Agent) -> None:
    """Agents timed by latbench's loop give a runnable of one op; an agent whose runner times ops on
    the device (android) refuses it in one line."""
    op = O.conv(S, 24, 3)
    if not agent.interleaves:
        with pytest.raises(UsageError, match=f"^{agent.name}: .*no host runnable of one op"):
            agent.prepare_op(op)
        return
    with agent.state():
        p = agent.prepare_op(op)
        p()
        p()


NET_SPACE, NET_TOL = "tiny", 1e-3


def _chain_reference(blocks: list[OpSpec], seed: int) -> "torch.nn.Module":
    """The subnet's blocks in a row, each the torch reference with its canonical weights (seed + i):
    what the .tflite chain builder builds."""
    from device_agents.torch_local import reference_module
    from device_agents.weights import op_weights

    mods = [reference_module(b, op_weights(b, seed + i)) for i, b in enumerate(blocks)]

    class Chain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(mods)

        def forward(self, x):
            for b, m in zip(blocks, self.blocks):
                x = m(x.flatten(1) if b.kind == "linear" and x.dim() == 4 else x)
            return x

    return Chain().eval()


def test_prepare_network_runs_the_subnet_the_torch_reference_computes(agent: Agent) -> None:
    """The whole subnet an agent runs computes what torch does (its source module, or the chain of
    block references for a .tflite); prepare_network's plain call runs on the host, or, where the
    runtime times networks on the device, time_networks gives one pass of each, in order."""
    from latbench.spaces import get_space

    space = get_space(NET_SPACE)
    small, large = space.smallest(), space.largest()
    model = agent.network_model(space, small)
    assert model.kind == agent.model_kind and model.input_shape == tuple(space.input_shape(small))
    x = np.random.default_rng(7).standard_normal(model.input_shape, dtype=np.float32)
    ref_module = model.source if model.source is not None else _chain_reference(space.blocks(small), agent.seed)
    with torch.inference_mode():
        ref = ref_module(torch.from_numpy(x)).numpy()
    out = np.asarray(agent.run_network(model, x))
    np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=NET_TOL, atol=NET_TOL * max(1.0, float(np.abs(ref).max())))
    if agent.times_on_device:
        with pytest.raises(UsageError):
            agent.prepare_network(space, small)
        y = YardstickSettings(warmup=1, warmup_s=0.0, runs=5, min_s=0.0, passes=1)
        got = agent.time_networks([model, agent.network_model(space, large)], y)
        assert len(got) == 2 and all(g.n >= 5 and g.mean > 0 for g in got)
        assert got[1].mean > got[0].mean  # in order: the largest subnet second
        return
    with pytest.raises(UsageError, match="use prepare_network|time prepare_network"):
        agent.time_networks([model], YardstickSettings())
    with agent.state():
        plain = agent.prepare_network(space, small)
        plain()
        timed = agent.prepare_model(model)
        timed()


# ---------------------------------------------------------------------- probed agents
@pytest.mark.parametrize("name", PROBED)
def test_probed_agent_present_or_skipped_once(request: pytest.FixtureRequest, name: str) -> None:
    """A PROBED agent present at collection is in every test above; absent (cuda without a GPU), it
    is in none of them and this one skip says why, once the agent has been asked again."""
    if name not in ABSENT:
        a = build_agent(request, name)
        try:
            assert a.name == name and a.profile.agent == name
        finally:
            a.close()
        return
    again = _build(request, name)
    if not isinstance(again, str):
        again.close()
    assert again == ABSENT[name], f"agent {name!r} was absent at collection, now: {again!r}"
    _skip(name, ABSENT[name])


# ---------------------------------------------------------------------- the suite's own rules
def _module(tmp_path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    """A module `name` on sys.path holding `body`, registered as agent `name`."""
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(device_agents._AGENTS, name, (name, "SomeAgent"))
    monkeypatch.setitem(AGENT_FACTORIES, name, by_name(name))


def test_an_agent_module_that_fails_to_import_fails_the_suite(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered agent whose module is missing, raises on import or needs an extra that is not
    installed is an error of the suite, not a skip; only an absent device is skipped, with why."""
    monkeypatch.setitem(device_agents._AGENTS, "unwritten", ("device_agents.unwritten_agent", "SomeAgent"))
    monkeypatch.setitem(AGENT_FACTORIES, "unwritten", by_name("unwritten"))
    with pytest.raises(ModuleNotFoundError, match="device_agents.unwritten_agent"):
        _build(None, "unwritten")
    _module(tmp_path, monkeypatch, "agent_with_broken_import", "import latbench.no_such_module\n")
    with pytest.raises(ModuleNotFoundError, match="latbench.no_such_module"):
        _build(None, "agent_with_broken_import")
    _module(tmp_path, monkeypatch, "agent_needing_an_extra",
            "from latbench.errors import require\nrequire('no_such_runtime_for_latbench', 'nothing')\n")
    with pytest.raises(MissingExtraError, match=r"latbench\[nothing\]"):
        _build(None, "agent_needing_an_extra")
    # a device that is not there (a CUDA index no machine has) is the one reason to skip
    monkeypatch.setitem(AGENT_FACTORIES, "cuda99", lambda request, **kw: get_agent("cuda", index=99, **kw))
    assert _build(None, "cuda99").startswith("device unavailable (no CUDA device")
