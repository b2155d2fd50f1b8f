"""Agent: runs ops and whole networks on one device; one contract for every agent (cpu, cuda, ort,
tflite, android), checked by tests/test_agent_conformance.py.

The contract:
- `Options`: a frozen AgentOptions dataclass of the agent's typed constructor options.
- `from_profile(profile_or_spec)` / `to_spec()`: rebuild an agent from a table's DeviceProfile or
  from a plain JSON spec `{"agent": name, "options": {...}}` (what a device farm sends to the host
  holding the device); `to_spec()` gives that spec. The rebuilt agent has the same profile id.
- `fingerprint()`: the DeviceProfile its numbers are valid for.
- `prepare_op(op)`: a runnable of one op on prepared inputs (a Prepared), what the shared timing
  loop times; an agent whose runner times ops on the device (android) refuses it in one line.
  `run(op, x)`: one inference of the op on `x` (compared with the torch reference).
- `measure(ops, timing)`: the one measuring path: ops in batches of `batch_len(timing)`, each
  batch timed by `measure_batch` under `state()` (the shared loop of latbench.measure; android
  overrides `measure_batch` and `measure_settings` to run a batch on the phone), one Measurement
  per op, a batch's results yielded before the next ops are taken.
- Whole networks: `model_kind` (what it runs end to end: "onnx", "tflite" or "torch"),
  `network_model(space, config)` (the subnet built once as a NetworkModel), `prepare_model(model)`
  (a fresh runnable of it timed like ops), `plain_model(model)` (a fresh runnable of the plain
  call users time: `plain_call` says which), `prepare_network(space, config)` (both in one) and
  `run_network(model, x)` (one inference, for the conformance suite). `plain_statistics` are the
  statistics the plain call can report.
- `time_networks(models, yardstick)`: one yardstick pass over whole networks timed by the runtime's
  own loop on the device (`times_on_device`: a phone's benchmark_model; `network_batch` of them a
  call at best); host agents do not support it (UsageError): time `prepare_network`'s runnable.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import numbers
import os
import time
import traceback
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from latbench.device import DeviceProfile
from latbench.errors import LatbenchError, UsageError
from latbench.measure import Measurement, Stats, TimingSettings, time_batch, time_callable
from latbench.ops import OpSpec
from latbench.yardstick import STATISTICS, PassStats, YardstickSettings

from .weights import op_weights, seeded_pool


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Prepared:
    """What an agent built for one op: calling it runs the op once on prepared inputs; `touch()`
    reads those inputs (network-context timing re-reads them before each timed call, as the op
    before it in a network has just written them); `keep` holds what the callables need alive."""

    run: Callable[[], Any]
    touch: Callable[[], Any] = _nothing
    keep: Any = None
    note: dict[str, Any] | None = None  # how it was built, kept in the measurement's extra

    def __call__(self) -> Any:
        return self.run()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _coerce(agent: str, name: str, hint: Any, value: Any) -> Any:
    """`value` as the field's declared type (int, float, bool, str, or Optional of one); text as
    it comes from a command line is parsed; anything else is a one-line UsageError."""
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X] or X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    bad = UsageError(f"{agent}: option {name} must be {getattr(hint, '__name__', hint)}, got {value!r}")
    if isinstance(value, str) and hint is not str:
        return _parse(agent, name, hint, value.strip(), bad)
    if hint is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise bad
    if isinstance(value, (bool, np.bool_)):  # a bool is an int to Python, never to an option
        raise bad
    if hint is int and isinstance(value, numbers.Integral):
        return int(value)
    if hint is float and isinstance(value, numbers.Real):
        return _finite(agent, name, float(value), value)
    if hint is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, hint):
        return value
    raise bad


def _parse(agent: str, name: str, hint: Any, text: str, bad: UsageError) -> Any:
    """An option given as text (a command line, an environment variable) as its field's type."""
    if hint is bool and text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    try:
        if hint is int:
            return int(text)
        if hint is float:
            return _finite(agent, name, float(text), text)
    except ValueError:
        pass
    raise bad


def _finite(agent: str, name: str, x: float, given: Any) -> float:
    if not math.isfinite(x):
        raise UsageError(f"{agent}: option {name} must be a finite number, got {given!r}")
    return x


@dataclass(frozen=True)
class AgentOptions:
    """An agent's constructor options, typed: an unknown name, a wrong type or a value out of
    range is refused where it enters (`from_kwargs`), and the options are plain JSON (`to_dict`)
    so an agent can be rebuilt from them anywhere. Agents subclass this with their own fields
    and extend `check`."""

    threads: int = 1
    seed: int = 0

    @classmethod
    def from_kwargs(cls, agent: str, kwargs: Mapping[str, Any]) -> "AgentOptions":
        hints = typing.get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(k for k in kwargs if k not in known)
        if unknown:
            raise UsageError(f"{agent}: unknown option{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(unknown)} (known: {', '.join(known)})")
        opts = cls(**{k: _coerce(agent, k, hints[k], v) for k, v in kwargs.items()})
        opts.check(agent)
        return opts

    def check(self, agent: str) -> None:
        """Refuse values out of range (subclasses call this and add their own)."""
        cores = self.max_threads()
        if not 1 <= self.threads <= cores:
            raise UsageError(f"{agent}: threads must be between 1 and {cores} (the cores this "
                             f"machine gives the process), got {self.threads}")
        if self.seed < 0:
            raise UsageError(f"{agent}: seed must be >= 0, got {self.seed}")

    def max_threads(self) -> int:
        """The most threads that make sense: the cores this process may use (a device agent
        whose threads run elsewhere overrides this)."""
        return usable_cores()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# what `plain_model` runs, in words, by model kind (Agent.plain_call)
PLAIN_CALLS = {"onnx": "session.run with a numpy input", "tflite": "interpreter.invoke() on inputs set once",
               "torch": "module(x) under inference_mode"}


@dataclass(frozen=True)
class NetworkModel:
    """A whole network built once for an agent (`Agent.network_model`): its kind (the agent's
    model_kind), the model (.onnx bytes, .tflite bytes or a torch module) and its input shape."""

    kind: str
    model: Any
    input_shape: tuple[int, ...]
    source: Any = None  # the torch module it was made from, if it was: what its outputs must match

    def file_bytes(self) -> bytes:
        """The file a runner on a device is handed (.onnx or .tflite bytes)."""
        if not isinstance(self.model, (bytes, bytearray)):
            raise UsageError(f"a {self.kind} network has no file form for a device runner")
        return bytes(self.model)


class Agent:
    """Base class of every agent (the contract: see the module docstring). Agents hold no global
    state: several may run side by side.

    Options are the class's `Options` dataclass: `Agent(**options)` validates them
    (AgentOptions.from_kwargs) into `self.opts`."""

    name: str = ""
    granularities = ("op", "block")
    fusion: str = "none"  # which op patterns the runtime runs as one kernel (latbench.ops.FUSIONS)
    contexts = ("warm", "network")  # cache contexts the agent can time in (TimingSettings.context)
    interleaves = True  # times ops in interleaved rounds (TimingSettings.rounds/interleave)
    model_kind: str = ""  # the whole network it runs end to end: "onnx", "tflite", "torch" ("": none)
    times_on_device = False  # whether time_networks works (the runtime times whole networks itself)
    network_batch = 1  # whole networks one time_networks call is best handed (android: a push's worth)
    plain_statistics: tuple[str, ...] = STATISTICS  # what the plain call's timing can be read as
    cooling = False  # True while the agent waits for a hot device to cool (a farm lists it as hot)
    runs_nodes = False  # times node ops (latbench.nodes): the nodes of its runtime's own graph
    # the cache context `profile --model` times a model's ops in unless told (network: the model's
    # weights read through the caches before each call; measured per runtime by benchmarks/zoo.py)
    model_context = "network"

    Options: type[AgentOptions] = AgentOptions

    def __init__(self, **options: Any):
        self.opts = self.Options.from_kwargs(self.name or type(self).__name__, options)
        self.threads = self.opts.threads
        self.seed = self.opts.seed
        self._profile: DeviceProfile | None = None

    # ---------------------------------------------------------------- rebuilding anywhere
    @classmethod
    def from_profile(cls, source: "DeviceProfile | Mapping[str, Any]", **overrides: Any) -> "Agent":
        """The agent a table's DeviceProfile was measured with, or the one a JSON spec
        `{"agent": name, "options": {...}}` (to_spec) describes; `overrides` replace options
        (e.g. another serial). Called on Agent, the profile's or spec's agent class is used; on an
        agent class, a profile or spec of another agent is refused."""
        if isinstance(source, DeviceProfile):
            name = source.agent
        elif isinstance(source, Mapping) and isinstance(source.get("agent"), str):
            name = source["agent"]
            if not isinstance(source.get("options", {}), Mapping):
                raise UsageError(f"agent spec: options must be a mapping, got {source.get('options')!r}")
        else:
            raise UsageError(f"from_profile takes a DeviceProfile or a spec {{'agent': name, 'options': "
                             f"{{...}}}}, got {type(source).__name__}")
        if cls is Agent:
            from . import agent_class

            return agent_class(name).from_profile(source, **overrides)
        if name != cls.name:
            raise UsageError(f"a {name!r} profile cannot rebuild a {cls.name!r} agent")
        opts = cls.options_from_profile(source) if isinstance(source, DeviceProfile) else dict(source.get("options", {}))
        return cls(**{**opts, **overrides})

    @classmethod
    def options_from_profile(cls, profile: DeviceProfile) -> dict[str, Any]:
        """The options that reproduce `profile` on this agent (threads; agents add their own)."""
        return {"threads": profile.threads}

    def to_spec(self) -> dict[str, Any]:
        """This agent as plain JSON: from_profile(spec) builds it again, on any host."""
        return {"agent": self.name, "options": self.opts.to_dict()}

    # ---------------------------------------------------------------- to implement
    def fingerprint(self) -> DeviceProfile:  # pragma: no cover - abstract
        raise LatbenchError(f"agent {self.name} defines no fingerprint")

    def prepare_op(self, op: OpSpec) -> Callable[[], Any]:  # pragma: no cover - abstract
        """A zero-argument callable that runs `op` once on prepared inputs (a Prepared, when the
        agent can re-read those inputs for network-context timing)."""
        raise LatbenchError(f"agent {self.name} cannot prepare ops")

    def run(self, op: OpSpec, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """One inference of `op` on the NCHW float32 input `x`, output in NCHW (conformance)."""
        raise LatbenchError(f"agent {self.name} cannot run ops")

    def state(self) -> contextlib.AbstractContextManager:
        """The runtime state the agent's prepared callables run under (torch: threads, inference
        mode), set while inside; nothing for runtimes that hold it per session."""
        return contextlib.nullcontext()

    def synchronizer(self) -> Callable[[], Any] | None:
        """Run before each clock read (e.g. torch.cuda.synchronize) so queued device work is timed."""
        return None

    # ---------------------------------------------------------------- whole networks
    def network_model(self, space, config) -> NetworkModel:
        """The subnet `config` of `space` as the whole model this agent runs, built once."""
        raise UsageError(f"end-to-end measurement on device {self.name!r} is not supported")

    def prepare_model(self, model: Any, input_shape: Sequence[int] | None = None) -> Prepared:
        """A fresh runnable of a whole model (a NetworkModel, or the runtime's own model form with
        its input shape) timed the way ops are: its own session, interpreter or module copy, so
        several can be timed side by side (time_batch). Call it inside `state()`."""
        raise UsageError(f"agent {self.name} cannot run whole models on this host")

    def run_network(self, model: NetworkModel, x: np.ndarray) -> np.ndarray:
        """One inference of a whole network on the NCHW float32 input `x`, its output as torch
        gives it (the conformance suite compares it with the network's torch reference)."""
        raise UsageError(f"agent {self.name} cannot run whole models on this host")

    def plain_model(self, model: Any, input_shape: Sequence[int] | None = None) -> Prepared:
        """A fresh runnable of a whole model called as users time it (`plain_call`); the same as
        prepare_model where that already is the plain call."""
        return self.prepare_model(model, input_shape)

    def prepare_network(self, space, config) -> Prepared:
        """One runnable of the whole subnet `config`, called the way users time it (plain_model)."""
        return self.plain_model(self.network_model(space, config))

    @property
    def plain_call(self) -> str:
        """What the plain call of a whole network is, in words."""
        return PLAIN_CALLS.get(self.model_kind, f"{self.name} runs no whole networks")

    def measure_model(self, model: Any, input_shape: Sequence[int] | None = None,
                      timing: TimingSettings = TimingSettings()) -> Stats:
        """Time a whole model (see prepare_model) with the shared timing loop."""
        with self.state():
            p = self.prepare_model(model, input_shape)
            return time_callable(p, timing, sync=self.synchronizer(), touch=getattr(p, "touch", None))

    def time_networks(self, models: Sequence[NetworkModel], yardstick: YardstickSettings) -> list[PassStats]:
        """One yardstick pass over whole networks, in order, timed by the runtime's own loop on the
        device (agents whose `times_on_device`). Host agents do not: time prepare_network's runnable."""
        raise UsageError(f"{self.name}: timing whole networks with the runtime's own loop on the device is not "
                         f"supported by this agent; time prepare_network's runnable instead")

    # ---------------------------------------------------------------- shared
    @property
    def profile(self) -> DeviceProfile:
        if self._profile is None:
            self._profile = self.fingerprint()
        return self._profile

    def weights(self, op: OpSpec):
        return op_weights(op, self.seed)

    def settings(self) -> dict[str, Any]:
        """Per-measurement settings recorded with each number (beyond the profile)."""
        p = self.profile
        return {"agent": self.name, "runtime": p.runtime, "runtime_version": p.runtime_version,
                "threads": p.threads, "delegate": p.delegate, **dict(p.options)}

    def measure_settings(self, timing: TimingSettings) -> dict[str, Any]:
        """The settings every row of one `measure` call records."""
        return {**self.settings(), "timing": timing.to_dict(), "estimator": timing.estimator}

    def measure(self, ops: Iterable[OpSpec], timing: TimingSettings = TimingSettings()) -> Iterator[Measurement]:
        """Time each op; a failing op yields a 'failed' Measurement and the run goes on.

        Ops are taken `batch_len(timing)` at a time (one by default, so each result is handed
        over before the next op is even read); a batch is measured by `measure_batch` under the
        agent's `state()` (set only while it works, not while the caller holds a result) and its
        results yielded in order."""
        self.check_timing(timing)
        profile_id = self.profile.id
        settings = self.measure_settings(timing)
        size = self.batch_len(timing)
        it = iter(ops)
        while True:
            batch = list(itertools.islice(it, size))
            if not batch:
                return
            with self.state():
                results = list(self.measure_batch(batch, timing, settings, profile_id))
            yield from results

    def measure_batch(self, batch: list[OpSpec], timing: TimingSettings, settings: dict[str, Any],
                      profile_id: str) -> Iterator[Measurement]:
        """One batch: each op prepared (prepare_op), timed round-robin in `timing.rounds` rounds
        (latbench.measure.time_batch), one Measurement per op in order."""
        built: list[tuple[OpSpec, Any, float]] = []  # (op, prepared callable or its error, seconds)
        for op in batch:
            t0 = time.perf_counter()
            try:
                built.append((op, self.prepare_op(op), time.perf_counter() - t0))
            except Exception as e:  # the op is reported, the run goes on
                built.append((op, e, time.perf_counter() - t0))
        live = [fn for _, fn, _ in built if not isinstance(fn, Exception)]
        timed = iter(time_batch(live, timing, sync=self.synchronizer(),
                                touches=[getattr(fn, "touch", None) for fn in live]))
        for op, fn, prep_s in built:
            base = dict(key=op.key, profile_id=profile_id, op=op.to_dict(), settings=settings)
            if isinstance(fn, Exception):
                yield Measurement(**base, stats=None, status="failed", error=_one_line(fn), wall_s=prep_s)
                continue
            t = next(timed)
            if t.error is not None:
                yield Measurement(**base, stats=None, status="failed", error=_one_line(t.error),
                                  wall_s=prep_s + t.seconds)
                continue
            extra = {"round_medians": list(t.stats.rounds)} if t.stats.rounds else {}
            extra.update(getattr(fn, "note", None) or {})
            yield Measurement(**base, stats=t.stats, wall_s=prep_s + t.seconds, timed_s=t.seconds, extra=extra)

    def batch_len(self, timing: TimingSettings) -> int:
        """Ops `measure` takes and times together under `timing` (profile_into adds one sample
        of the per-call cost to each batch when this is > 1)."""
        return timing.interleave if self.interleaves else 1

    @property
    def pool(self) -> np.ndarray:
        """Seeded standard normals (weights.seeded_pool of the agent's seed), drawn once, that
        node ops' tensors and timing weights are cut from."""
        pool = self.__dict__.get("_pool")
        if pool is None:
            pool = self.__dict__["_pool"] = seeded_pool(self.seed)
        return pool

    @classmethod
    def lowering_agent(cls, profile: DeviceProfile) -> "Agent":
        """The agent that lowers a model for a table of this agent's node ops (`profile`'s): the
        agent the profile names, rebuilt here (android: the host's LiteRT, no phone needed)."""
        return cls.from_profile(profile)

    def runs_node(self, spec) -> bool:
        """Whether this agent times the node `spec` (a latbench.nodes.NodeSpec): a node of its
        runtime's own graph (ONNX domains for ort, "tflite" for LiteRT runtimes)."""
        return False

    def check_ops(self, ops: Sequence[OpSpec]) -> None:
        """Refuse an op list holding ops this agent cannot build at all (nodes of another
        runtime's graph), before any table is made or any op is timed."""
        foreign = [op for op in ops if op.kind == "node" and not self.runs_node(op.graph_node)]
        if foreign:
            spec = foreign[0].graph_node
            whose = {"tflite": "a LiteRT (.tflite)", "aten": "a torch eager (ATen)"}.get(spec.domain, "an ONNX Runtime")
            raise UsageError(f"{self.name}: {len(foreign)} op(s) are nodes of {whose} graph (e.g. "
                             f"{foreign[0].key[:80]}...), which this device does not time; list this "
                             f"device's ops with `latbench ops --model ... --device {self.name}`")

    def check_timing(self, timing: TimingSettings) -> None:
        """Refuse settings this agent cannot time under (its rows would claim them falsely): a
        cache context it lacks, or interleaved rounds when it runs each op in one go."""
        if timing.context not in self.contexts:
            raise UsageError(f"{self.name}: cannot time in {timing.context!r} context "
                             f"(this agent times in: {', '.join(self.contexts)})")
        if (timing.rounds > 1 or timing.interleave > 1) and not self.interleaves:
            raise UsageError(f"{self.name}: cannot time ops in interleaved rounds (rounds and interleave must be 1)")

    def close(self) -> None:
        """Release runtime resources (sessions, interpreters, device connections)."""


def _one_line(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
    if len(msg) > 500:
        msg = msg[:500] + "..."
    tb = traceback.extract_tb(e.__traceback__)
    where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    return msg + where
