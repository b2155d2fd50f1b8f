"""One conformance suite every device agent passes (optuna's shared storage tests, for agents).

Adding an agent is one line in AGENT_FACTORIES: name -> factory(request, threads=..., seed=...)
returning the agent (the factory may pull other fixtures, e.g. a stand-in adb server, through
`request.getfixturevalue`). An agent whose runtime is not installed or whose device is absent
is skipped with a warning naming the reason, so it shows in the summary even without `-rs`.
"""
from __future__ import annotations

import math
import re
import time
import warnings
from typing import Any, Callable, Iterator

import numpy as np
import pytest

import device_agents
from device_agents import Agent, get_agent
from latbench import ops as O
from latbench.errors import DeviceUnavailableError, MissingExtraError
from latbench.measure import Measurement, TimingSettings
from latbench.ops import OpSpec

torch = pytest.importorskip("torch", reason="the conformance reference is torch: pip install 'latbench[torch]'")

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
}

# short timings keep the suite fast; min_samples is what the statistics checks rely on
FAST = TimingSettings(warmup=1, warmup_s=0.0, min_samples=5, max_samples=30, max_time_s=0.2)
RTOL, ATOL = 1e-4, 1e-4


class AgentSkipped(UserWarning):
    """An agent of the suite could not be built here (runtime missing, no device)."""


def _skip(name: str, reason: str) -> None:
    msg = f"agent {name!r} skipped: {reason}"
    warnings.warn(msg, AgentSkipped, stacklevel=2)
    pytest.skip(msg)


def build_agent(request: pytest.FixtureRequest, name: str, **kw: Any) -> Agent:
    """The agent from its factory, or a skip naming why it cannot exist on this machine."""
    try:
        return AGENT_FACTORIES[name](request, **kw)
    except MissingExtraError as e:
        _skip(name, f"runtime not installed ({e})")
    except DeviceUnavailableError as e:
        _skip(name, f"device unavailable ({e})")
    except ModuleNotFoundError as e:
        missing = e.name or ""
        own_module = device_agents._AGENTS.get(name, ("",))[0]  # the agent's module, not written yet
        if missing.split(".")[0] in ("latbench", "device_agents") and missing != own_module:
            raise  # a broken import inside latbench is a failure, not a skip
        _skip(name, f"module {missing!r} not importable ({e})")
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.fixture(scope="module", params=list(AGENT_FACTORIES))
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
]

BLOCK_LEVEL: list[OpSpec] = [
    O.conv(S, 24, 3, bn=True, act="relu"),
    O.conv(S, 24, 3, stride=2, bn=True, act="hswish"),
    O.conv(S, 16, 3, groups=16, bn=True, act="relu6"),
    O.mbconv(S, 24, 48, 3, 2, "relu"),  # with expansion conv
    O.mbconv(S, 16, 16, 3, 1, "relu", residual=True, expand_conv=False),  # without
    O.mbconv(S, 16, 64, 5, 1, "hswish", se=16, residual=True),  # SE after the depthwise conv
    O.mbconv(S, 24, 48, 3, 1, "relu", se=8, se_pos="out"),  # SE on the block output (LightNAS)
    O.resblock("bottleneck", S, 32, 3, 2, mid=8),  # with projection
    O.resblock("basic", S, 24, 3, 2),  # with projection
    O.resblock("basic", S, 16, 3, 1),  # identity shortcut
]


def _is_block(op: OpSpec) -> bool:
    return op.kind in O.BLOCK_KINDS or len(O.expand(op)) > 1


def _ids(ops: list[OpSpec]) -> list[str]:
    return [op.key for op in ops]


# ---------------------------------------------------------------------- correctness
@pytest.mark.parametrize("op", OP_LEVEL + BLOCK_LEVEL, ids=_ids(OP_LEVEL + BLOCK_LEVEL))
def test_output_matches_torch_reference(agent: Agent, op: OpSpec) -> None:
    """The agent runs the op we mean to time: same output as the torch reference, same weights."""
    from device_agents.torch_local import reference_module

    granularity = "block" if _is_block(op) else "op"
    if granularity not in agent.granularities:
        pytest.skip(f"agent {agent.name!r} measures {agent.granularities} only, not {granularity}")
    x = np.random.default_rng(1234).standard_normal(op.in_shape, dtype=np.float32)
    with torch.inference_mode():
        ref = reference_module(op, agent.weights(op))(torch.from_numpy(x)).numpy()
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


def _check_measurement(m: Measurement, op: OpSpec, agent: Agent) -> None:
    assert m.key == op.key and OpSpec.from_dict(m.op) == op
    assert m.ok and not m.error and m.stats is not None, m.error
    s = m.stats
    assert 0 < s.min <= s.median <= s.max
    assert s.p25 <= s.median <= s.p75
    assert FAST.min_samples <= s.n <= FAST.max_samples
    assert s.block >= 1 and s.std >= 0 and s.mean > 0
    assert m.profile_id == agent.profile.id
    p = agent.profile
    assert m.settings["threads"] == agent.threads == p.threads
    assert m.settings["runtime"] == p.runtime and p.runtime
    assert m.settings["runtime_version"] == p.runtime_version and p.runtime_version
    assert m.wall_s >= m.timed_s > 0


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
