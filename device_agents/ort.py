"""ONNX Runtime agent: each op becomes a one-op (or one-block) ONNX graph, run in an
InferenceSession with pinned threads, no spinning and inputs/outputs bound once (IOBinding), so
the timed call is the runtime's kernel work and little else."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from latbench import ops as O
from latbench.device import DeviceProfile, host_profile
from latbench.errors import DeviceUnavailableError, OpError, UsageError, require
from latbench.ops import OpSpec

from .base import Agent, AgentOptions, NetworkModel, Prepared
from .networks import export_onnx
from .onnx_build import build_onnx, graph_in_shape, graph_out_shape
from .ort_graph import conv_fusion, graph_feeds, graph_tensors, node_model, optimised_model
from .ort_layout import network_graph
from .weights import Weights

ort = require("onnxruntime", "ort")
onnx = require("onnx", "ort")

_GOL = ort.GraphOptimizationLevel
OPT_LEVELS = {
    "all": _GOL.ORT_ENABLE_ALL,
    "extended": _GOL.ORT_ENABLE_EXTENDED,
    "basic": _GOL.ORT_ENABLE_BASIC,
    "disable": _GOL.ORT_DISABLE_ALL,
}
BOUNDARIES = ("network", "graph")  # how an op's graph meets its neighbours (OrtAgent.prepare_op)


@dataclass(frozen=True)
class OrtOptions(AgentOptions):
    """ort: graph optimisation level, execution provider, how an op meets its neighbours."""

    opt_level: str = "all"
    provider: str = "CPUExecutionProvider"
    boundary: str = "network"

    def check(self, agent: str) -> None:
        super().check(agent)
        if self.opt_level not in OPT_LEVELS:
            raise UsageError(f"{agent}: opt_level must be one of {', '.join(OPT_LEVELS)}, got {self.opt_level!r}")
        if self.boundary not in BOUNDARIES:
            raise UsageError(f"{agent}: boundary must be one of {', '.join(BOUNDARIES)}, got {self.boundary!r}")


class OrtAgent(Agent):
    """Times ops in onnxruntime on this host (one session per op, freed before the next)."""

    name = "ort"
    model_kind = "onnx"
    runs_nodes = True  # times latbench.nodes ops: the nodes of its own optimised graph (lower_model)

    Options = OrtOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        opt_level, provider, boundary = self.opts.opt_level, self.opts.provider, self.opts.boundary
        have = ort.get_available_providers()
        if provider not in have:
            raise DeviceUnavailableError(f"ort: execution provider {provider!r} is not available (have: {', '.join(have)})")
        self.opt_level = opt_level
        self.provider = provider
        # network: time ops as they run between convolutions (ort_layout), which differs from an
        # op's own graph only where ONNX Runtime converts to NCHWc (level all)
        self.boundary = boundary if opt_level == "all" else "graph"
        # BN folding + conv/activation fusion happen from EXTENDED on, with the activations the
        # installed runtime fuses (read off its optimised graph: conv_fusion); BASIC folds BN only
        self.fusion = conv_fusion(opt_level, provider) if opt_level in ("all", "extended") else \
            {"basic": "ort-basic"}.get(opt_level, "none")
        self._sess_options = session_options(self.threads, opt_level)
        self._cut_options = session_options(self.threads, "disable")  # cut graphs are optimised already
        self._live: tuple | None = None  # the session (and binding) of the op being timed

    @classmethod
    def options_from_profile(cls, profile: DeviceProfile) -> dict[str, Any]:
        """threads, provider, opt_level and boundary (a profile from before boundaries were
        recorded timed each op's own graph)."""
        opts = dict(profile.options)
        return {"threads": profile.threads, "provider": profile.delegate,
                "opt_level": opts.get("opt_level", "all"), "boundary": opts.get("boundary", "graph")}

    def fingerprint(self) -> DeviceProfile:
        return host_profile("ort", "onnxruntime", ort.__version__, self.threads, delegate=self.provider,
                            options={"opt_level": self.opt_level,  # no boundary: a table from before it
                                     **({"boundary": self.boundary} if self.boundary != "graph" else {})})

    # ---------------------------------------------------------------- sessions
    def session(self, model: "onnx.ModelProto | bytes | str | os.PathLike") -> "ort.InferenceSession":
        """An InferenceSession on this agent's provider and options (model proto, bytes or path)."""
        if isinstance(model, onnx.ModelProto):
            model = model.SerializeToString()
        elif isinstance(model, os.PathLike):
            model = os.fspath(model)
        return ort.InferenceSession(model, self._sess_options, providers=[self.provider])

    def _release(self) -> None:
        """Drop the previous op's session so sessions never pile up."""
        self._live = None

    def close(self) -> None:
        self._release()

    # ---------------------------------------------------------------- agent API
    def timing_weights(self, op: OpSpec) -> Weights:
        """Weights for timing: op_weights' shapes and scales, cut from one seeded pool (see
        `timing_weights`), since drawing millions of normals would cost more than timing the op."""
        return timing_weights(op, self.pool)

    def prepare_op(self, op: OpSpec) -> Prepared:
        """A session for `op` with input and output bound once; calling it runs it once, `touch`
        re-reads the bound input (a numpy array the session reads in place). With boundary
        `network`, the op's kernels as ONNX Runtime runs them between two convolutions (NCHWc,
        no reorders at its ends: ort_layout); ops that are not between convolutions, and other
        optimisation levels, run their own graph (`note` says which)."""
        self._release()
        if op.kind == "node":
            return self._prepare_node(op)
        w = self.timing_weights(op)
        cut = None
        if self.boundary == "network":
            cut = network_graph(op, w, self.timing_weights, self._sess_options, self._cut_options, self.provider)
        if cut is None:
            sess, shapes = self.session(build_onnx(op, w)), (graph_in_shape(op), graph_out_shape(op))
        else:
            sess = ort.InferenceSession(cut.model, self._cut_options, providers=[self.provider])
            shapes = (cut.in_shape, cut.out_shape)
        x = np.array(_cut(self.pool, shapes[0]), dtype=np.float32)  # owned, contiguous
        binding, outs = bind(sess, x, [shapes[1]], share_input=True)
        self._live = (sess, binding)
        note = {"graph": "between convolutions" if cut is not None else "own"}
        return Prepared(runner(sess, binding), x.sum, keep=(sess, binding, x, outs), note=note)

    def runs_node(self, spec) -> bool:
        """ONNX nodes (the standard and ONNX Runtime's contrib domains), not LiteRT's or ATen's."""
        return spec.domain not in ("tflite", "aten")

    def _prepare_node(self, op: OpSpec) -> Prepared:
        """A node of ONNX Runtime's optimised graph (latbench.nodes) as a one-node session with
        optimisations off (it is optimised already), its data inputs and outputs bound once."""
        nm = node_model(op.graph_node, self.pool)
        sess = ort.InferenceSession(nm.model, self._cut_options, providers=[self.provider])
        binding = sess.io_binding()
        for name, arr in nm.feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
        for name, arr in nm.outputs.items():
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(arr))
        self._live = (sess, binding)
        floats = [a for a in nm.feeds.values() if a.dtype.kind == "f"]

        def touch() -> float:
            return float(sum(a.sum() for a in floats))

        return Prepared(runner(sess, binding), touch, keep=(sess, binding, nm), note={"graph": "runtime node"})

    def run_node(self, op: OpSpec) -> dict[str, np.ndarray]:
        """One run of a node op on its seeded inputs: its outputs by name (conformance)."""
        prepared = self._prepare_node(op)
        prepared()
        _, _, nm = prepared.keep
        out = {k: v.copy() for k, v in nm.outputs.items()}
        self._release()
        return out

    def lower_model(self, model: "onnx.ModelProto | bytes | str | os.PathLike",
                    input_shape: Sequence[int] | None = None):
        """A whole ONNX model as this agent's ONNX Runtime runs it: its optimised graph under the
        agent's session options (ort_graph.optimised_model), one node op per node
        (latbench.lower.lower_graph), shapes and dtypes from one seeded run of that graph."""
        from latbench.errors import FormatError
        from latbench.lower import lower_graph, read_onnx

        proto, name = read_onnx(model, input_shape)
        try:
            opt = optimised_model(proto.SerializeToString(), self._sess_options, self.provider)
            tensors = graph_tensors(opt, graph_feeds(opt, self.pool), self._cut_options, self.provider)
        except OpError as e:
            raise UsageError(f"{name}: {e}") from None
        except Exception as e:  # noqa: BLE001 - onnxruntime's own errors, said in one line
            raise FormatError(f"{name}: ONNX Runtime cannot run it ({' '.join(str(e).split())[:300]})") from None
        return lower_graph(opt, tensors)

    def run(self, op: OpSpec, x: np.ndarray) -> np.ndarray:
        """One inference with the canonical weights; a linear's (n, c, 1, 1) input is reshaped."""
        self._release()
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(graph_in_shape(op))
        sess = self.session(build_onnx(op, self.weights(op)))
        binding, outs = bind(sess, x, [graph_out_shape(op)])
        sess.run_with_iobinding(binding)
        return outs[0].numpy().reshape(op.out_shape).copy()

    def network_model(self, space, config) -> NetworkModel:
        """The torch subnet exported to ONNX (networks.export_onnx)."""
        module = space.build(config)
        return NetworkModel("onnx", export_onnx(space, config, module), tuple(space.input_shape(config)), module)

    def run_network(self, model: NetworkModel, x: np.ndarray) -> np.ndarray:
        """One session.run of the whole model on `x`: its first output."""
        sess = self.session(model.model)
        return np.asarray(sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})[0])

    def prepare_model(self, model: "NetworkModel | onnx.ModelProto | bytes | str | os.PathLike",
                      input_shape: Sequence[int] | None = None) -> Prepared:
        """A whole model (a NetworkModel, an .onnx proto, bytes or file) ready to time the way ops
        are timed: same session options, input and outputs bound once. Each call keeps its own
        session, so several models can be timed side by side (time_batch)."""
        self._release()
        sess, feed = self._whole_model(model, input_shape)
        (x,) = feed.values()
        shapes = [o.shape for o in sess.run(None, feed)]
        binding, outs = bind(sess, x, shapes, share_input=True)
        return Prepared(runner(sess, binding), x.sum, keep=(sess, binding, x, outs))

    def plain_model(self, model: "NetworkModel | onnx.ModelProto | bytes | str | os.PathLike",
                    input_shape: Sequence[int] | None = None) -> Prepared:
        """A whole model as users time it (latbench.yardstick): a new session with this agent's
        options, called as `session.run(None, {name: x})` with a numpy input, no IOBinding."""
        sess, feed = self._whole_model(model, input_shape)

        def run() -> Any:
            return sess.run(None, feed)

        return Prepared(run, keep=sess)

    def _whole_model(self, model, input_shape: Sequence[int] | None) -> tuple["ort.InferenceSession", dict[str, np.ndarray]]:
        """A new session of a one-input model and its input {name: seeded float32 array}; the
        shape is the NetworkModel's, the given one, else the graph's own (fixed dimensions)."""
        if isinstance(model, NetworkModel):
            model, input_shape = model.model, input_shape or model.input_shape
        sess = self.session(model)
        inputs = sess.get_inputs()
        if len(inputs) != 1:
            raise UsageError(f"ort: a whole model must have one input, this one has {len(inputs)}")
        shape = tuple(input_shape) if input_shape is not None else tuple(inputs[0].shape)
        if not all(isinstance(d, int) and d > 0 for d in shape):
            raise UsageError(f"ort: input {inputs[0].name!r} has shape {list(inputs[0].shape)}: pass input_shape")
        return sess, {inputs[0].name: np.array(_cut(self.pool, shape), dtype=np.float32)}


# ---------------------------------------------------------------------- helpers

def timing_weights(op: OpSpec, pool: np.ndarray) -> Weights:
    """Weights with op_weights' keys, shapes and scales, cut from `pool` (standard normals):
    float kernels take as long whatever the values, and slicing costs a copy where drawing the
    canonical weights of a 1280x960 conv takes ~40 ms here (3x its session's creation)."""
    at = 0

    def draw(shape: tuple[int, ...], scale: float, shift: float = 0.0) -> np.ndarray:
        nonlocal at
        vals = _cut(pool, shape, at)
        at = (at + vals.size) % pool.size
        out = vals * np.float32(scale)
        if shift:
            out += np.float32(shift)
        return out

    parts = O.expand(op)
    out: Weights = []
    for p in parts:
        w: dict[str, np.ndarray] = {}
        if p.kind == "conv":
            cin = p.c // p.groups
            w["weight"] = draw((p.out, cin, p.kernel, p.kernel), 1.0 / np.sqrt(cin * p.kernel * p.kernel))
            if p.bias:
                w["bias"] = draw((p.out,), 0.1)
        elif p.kind == "linear":
            w["weight"] = draw((p.out, p.c), 1.0 / np.sqrt(p.c))
            if p.bias:
                w["bias"] = draw((p.out,), 0.1)
        elif p.kind == "batch_norm":
            w = {"gamma": draw((p.c,), 0.1, 1.0), "beta": draw((p.c,), 0.1), "mean": draw((p.c,), 0.1),
                 "var": np.abs(draw((p.c,), 0.5)) + np.float32(1.0)}
        elif p.kind == "eltwise" and len(parts) == 1:
            w["other"] = draw((p.n, p.c, 1, 1) if p.broadcast else p.in_shape, 1.0)
        out.append(w)
    return out


def session_options(threads: int, opt_level: str) -> "ort.SessionOptions":
    """Sequential execution, `threads` intra-op threads that do not spin, one inter-op thread."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = OPT_LEVELS[opt_level]
    so.log_severity_level = 3  # errors only: warnings would print once per op
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def bind(sess: "ort.InferenceSession", x: np.ndarray, out_shapes: Sequence[Sequence[int]],
         share_input: bool = False):
    """Bind `x` to the model's input and preallocated float32 buffers to its outputs, in memory
    owned by onnxruntime; with `share_input` the session reads `x` itself (a contiguous float32
    array the caller keeps alive), so that re-reading `x` warms exactly what the op reads."""
    binding = sess.io_binding()
    if share_input:
        xv = ort.OrtValue.ortvalue_from_numpy(x)  # CPU: wraps x's memory, no copy
    else:
        xv = ort.OrtValue.ortvalue_from_shape_and_type(x.shape, np.float32, "cpu", 0)
        xv.update_inplace(x)
    binding.bind_ortvalue_input(sess.get_inputs()[0].name, xv)
    outs = []
    for o, shape in zip(sess.get_outputs(), out_shapes):
        v = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, "cpu", 0)
        binding.bind_ortvalue_output(o.name, v)
        outs.append(v)
    return binding, outs


def runner(sess: "ort.InferenceSession", binding) -> Callable[[], None]:
    """The timed call: one run on the bound buffers. Calls the C++ session directly, as the Python
    wrapper does after its WebGPU graph-capture checks (~1.5 us a call here, half a small op)."""
    c_sess, c_binding = getattr(sess, "_sess", None), getattr(binding, "_iobinding", None)
    if c_sess is not None and c_binding is not None and hasattr(c_sess, "run_with_iobinding"):
        run = c_sess.run_with_iobinding

        def fn() -> None:
            run(c_binding, None)
    else:  # pragma: no cover - other onnxruntime layouts
        def fn() -> None:
            sess.run_with_iobinding(binding)
    fn.session = sess  # type: ignore[attr-defined]  # the session lives as long as the callable
    return fn


def _cut(pool: np.ndarray, shape: Sequence[int], at: int = 0) -> np.ndarray:
    """`pool` values in `shape` from offset `at` (a view when they fit, tiled when not)."""
    n = int(np.prod(shape))
    if at + n > pool.size:
        return np.resize(pool, n).reshape(shape) if n > pool.size else pool[:n].reshape(shape)
    return pool[at:at + n].reshape(shape)


__all__ = ["OrtAgent", "OPT_LEVELS", "session_options", "bind", "runner", "timing_weights"]
