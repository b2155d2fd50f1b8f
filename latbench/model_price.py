"""A whole ONNX model priced from an op-level latency table (`latbench predict --model`).

The price is the table's price of the ops the model lowers to. Compute that maps to no table op
is listed by op type (count and node names) and makes the result partial: the price then covers
the mapped ops only and says so. Shape-only nodes (views, folded shape arithmetic: see
`latbench.lower.lower_onnx`) cost nothing and are only counted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import UsageError
from .lower import Unmapped
from .predict import DEFAULT_MAX_FALLBACK, FallbackError, Predictor, Price, Pricer


@dataclass(frozen=True)
class UnmappedGroup:
    """The unmapped compute nodes of one op type, in graph order."""

    op_type: str
    nodes: tuple[Unmapped, ...]

    def text(self) -> str:
        """'LRN x2: norm1, norm2' (a node's reason in parentheses after it)."""
        names = ", ".join(n.name + (f" ({n.reason})" if n.reason else "") for n in self.nodes)
        return f"{self.op_type} x{len(self.nodes)}: {names}"


@dataclass(frozen=True)
class ModelPrice:
    """The price of one model and what it covers."""

    model: str
    table: str
    input_shape: tuple[int, ...] | None  # the shape given for symbolic input dims
    price: Price  # of the mapped ops (uncalibrated: a calibration belongs to a space)
    ops: int  # mapped ops, before the table's fusion
    shape_only: int  # nodes that move no data
    unmapped: tuple[UnmappedGroup, ...]
    flops: int  # of the mapped ops
    params: int
    lowering: str = "ops"  # "ops": latbench's typed ops; "<agent> graph": its runtime's optimised graph
    statistic: str = ""  # what the entries are priced by, in words (Pricer.statistic)
    statistic_asked: bool = False  # another statistic than the table's own estimator was asked for

    @property
    def partial(self) -> bool:
        return bool(self.unmapped)

    @property
    def unmapped_nodes(self) -> int:
        return sum(len(g.nodes) for g in self.unmapped)

    def lines(self) -> list[str]:
        """stdout: the price line (labelled PARTIAL when compute is left out), then one line per
        unmapped op type."""
        p = self.price
        fallback = f"{len(p.misses)} of {p.keys} keys priced by the fallback"
        if self.statistic_asked:
            fallback = f"priced by {self.statistic}; {fallback}"
        if self.lowering != "ops":
            fallback += f"; lowered as the {self.lowering}"
        if not self.partial:
            return [f"{p.raw_ms:.4f} ms (uncalibrated; {fallback}; {self.flops / 1e6:.1f} MFLOPs) {self.model}"]
        head = (f"{p.raw_ms:.4f} ms PARTIAL: the {self.ops} mapped ops only, {self.unmapped_nodes} compute "
                f"node(s) not priced (uncalibrated; {fallback}; {self.flops / 1e6:.1f} MFLOPs mapped) {self.model}")
        return [head] + [f"not priced: {g.text()}" for g in self.unmapped]

    def summary(self) -> str:
        """The one stderr line of a partial result."""
        kinds = ", ".join(f"{g.op_type} x{len(g.nodes)}" for g in self.unmapped)
        return (f"{self.model}: {self.unmapped_nodes} compute node(s) not priced ({kinds}); the "
                f"{self.price.raw_ms:.4f} ms covers the {self.ops} mapped ops only")

    def to_dict(self) -> dict[str, Any]:
        p = self.price
        row = {"model": self.model, "input_shape": list(self.input_shape) if self.input_shape else None,
               "partial": self.partial, "ms": p.raw_ms, "raw_ms": p.raw_ms, "invocation_ms": p.invocation_ms,
               "misses": len(p.misses), "keys": p.keys, "missing_keys": sorted(set(p.misses)), "ops": self.ops,
               "shape_only": self.shape_only, "flops": self.flops, "params": self.params, "lowering": self.lowering,
               "statistic": self.statistic,
               "unmapped": [{"op_type": g.op_type, "count": len(g.nodes),
                             "nodes": [{"name": n.name, "reason": n.why} for n in g.nodes]}
                            for g in self.unmapped]}
        return {"table": self.table, "model": self.model, "granularity": "op", "statistic": self.statistic,
                "calibrated": False, "partial": self.partial, "predictions": [row]}


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """'1,3,224,224' -> (1, 3, 224, 224); None stays None."""
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(v < 1 for v in shape):
        raise UsageError(f"`input_shape` takes positive sizes separated by commas, e.g. 1,3,224,224; got {text!r}")
    return shape


def group_unmapped(nodes: Sequence[Unmapped]) -> tuple[UnmappedGroup, ...]:
    """Unmapped nodes by op type, types in order of first appearance."""
    by_type: dict[str, list[Unmapped]] = {}
    for n in nodes:
        by_type.setdefault(n.op_type, []).append(n)
    return tuple(UnmappedGroup(t, tuple(ns)) for t, ns in by_type.items())


def price_model(source, model, input_shape: Sequence[int] | None = None, strict: bool = False,
                max_fallback: float | None = DEFAULT_MAX_FALLBACK, statistic: str | None = None) -> ModelPrice:
    """Lower a model and price its ops from an op-level table: `source` a LatencyTable or a
    Predictor (latbench.predict; its table copied, so a closed table is fine); `model` an ONNX file
    or bytes (`input_shape` for symbolic dims) or a torch.nn.Module (`input_shape` required).
    A table that holds node ops (profiled with `--model` on ort) prices the model as its device's
    runtime optimised it (latbench.modelops.lower_model with the table's agent); other tables
    price latbench's typed ops. More than `max_fallback` of the keys missing is a FallbackError
    (None: any share). `statistic` (median, mean, min; a table `source` only, a Predictor has its
    own) prices each entry by that statistic of its samples, as `Predictor.from_table` does."""
    if isinstance(source, Predictor):
        if statistic is not None and statistic != source.statistic:
            raise UsageError(f"`statistic={statistic}`: the predictor prices by {source.statistic}; give "
                             f"`statistic` to Predictor.from_table")
        pricer, gran = source.pricer, source.pricer.granularity
        where = source.coverage.path if source.coverage else "the cost map"
        profile = source.coverage.profile if source.coverage else None
    else:
        run = source.run_settings
        where, gran, profile = str(source.path), run.granularity if run else "op", source.profile
        pricer = Pricer.from_table(source, "op", strict=strict, statistic=statistic) if gran == "op" else None
    name = _model_name(model)
    if gran != "op":
        raise UsageError(f"{name}: pricing a whole model needs an op-level table; {where} holds "
                         f"{gran}-level entries (profile with granularity op)")
    from .modelops import is_tflite_source, lower_model, reads_graph

    agent = _graph_agent(pricer, profile)
    if agent is not None and not reads_graph(agent, model):
        agent.close()
        agent = None
    if agent is None and is_tflite_source(model):
        agent_name = profile.agent if profile is not None and profile.agent else ""
        held = (f"a{'n' if agent_name[:1] in 'aeiou' else ''} {agent_name} table" if agent_name
                else "a table of latbench's typed ops")
        raise UsageError(f"{name}: {where} is {held}; a .tflite model is priced from a tflite table "
                         f"(`latbench profile --device tflite --model {name}`)")
    try:
        low = lower_model(model, input_shape, agent)
    finally:
        if agent is not None:
            agent.close()
    p = pricer.price(low.ops)
    if max_fallback is not None and len(p.misses) > max_fallback * p.keys:
        why = f"; {_held_vs_lowered(pricer.costs, low.ops, name)}" if len(p.misses) == p.keys else ""
        raise FallbackError(f"{where} prices {name} with {len(p.misses)} of {p.keys} keys missing, over "
                            f"the {max_fallback:.0%} allowed{why}; `max_fallback=None` prices them with the "
                            f"fallback regression")
    return ModelPrice(name, where, tuple(input_shape) if input_shape else None, p, len(low.ops),
                      len(low.free), group_unmapped(low.unmapped), sum(o.flops for o in low.ops),
                      sum(o.params for o in low.ops), f"{agent.name} graph" if agent is not None else "ops",
                      pricer.statistic, statistic is not None)


def _key_family(key: str) -> tuple[str, str]:
    """(what kind of op a key is, its op type): ('aten nodes', 'conv2d.default'), ('ONNX Runtime
    nodes', 'com.microsoft/FusedConv'), ('typed ops', 'conv')."""
    if key.startswith("node-op:"):
        op = key[len("node-op:"):].split("-v:", 1)[0]
        domain, _, op_type = op.rpartition("/")
        if domain in ("aten", "tflite"):
            return f"{domain} nodes", op_type
        return "ONNX Runtime nodes", op
    return "typed ops", key.split("-", 1)[0]


def _families(keys) -> str:
    """'aten nodes (conv2d.default, relu.default, linear.default, ...)', the most frequent kinds first."""
    by: dict[str, dict[str, int]] = {}
    for k in keys:
        fam, op_type = _key_family(k)
        types = by.setdefault(fam, {})
        types[op_type] = types.get(op_type, 0) + 1
    parts = []
    for fam, types in sorted(by.items(), key=lambda kv: -sum(kv[1].values())):
        top = sorted(types, key=lambda t: -types[t])
        parts.append(f"{fam} ({', '.join(top[:3])}{', ...' if len(top) > 3 else ''})")
    return " and ".join(parts) if parts else "nothing"


def _held_vs_lowered(costs, ops, name: str) -> str:
    """Why no key matched, in a clause: the kinds of op the table holds and those the model
    lowered to (a table of one lowering priced with another: aten nodes for an ONNX export, say)."""
    return f"the table holds {_families(costs)}, {name} lowered to {_families(o.key for o in ops)}"


def _graph_agent(pricer: Pricer, profile):
    """The agent that lowers a model for a table of runtime graph nodes (the agent its profile
    was measured with); None for a table of typed ops, or without a profile."""
    if profile is None or not any(k.startswith("node-") for k in pricer.costs):
        return None
    from device_agents import agent_class

    cls = agent_class(profile.agent)
    if not getattr(cls, "runs_nodes", False):
        return None
    return cls.lowering_agent(profile)


def _model_name(model) -> str:
    """A model's name in messages: its path, or a torch module's class name."""
    if isinstance(model, (bytes, bytearray)):
        return "<ONNX bytes>"
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return type(model).__name__
