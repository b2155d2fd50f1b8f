"""LiteRT (TFLite) agent: each op becomes a single-op .tflite model (device_agents.tflite_build)
run by the LiteRT interpreter on this host, with XNNPACK (the default delegate) or the builtin
kernels. The same model bytes are what an Android agent pushes to benchmark_model."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Sequence

import numpy as np

from latbench.device import DeviceProfile, host_profile
from latbench.errors import MissingExtraError
from latbench.ops import OpSpec

from .base import Agent, AgentOptions, NetworkModel, Prepared
from .networks import tflite_network
from .tflite_build import build_tflite
from .tflite_graph import lower_tflite, read_model, tflite_node_model


def _runtime() -> tuple[Any, Any, str, str]:
    """(Interpreter, OpResolverType, runtime name, version): ai-edge-litert, else tflite_runtime."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        return Interpreter, OpResolverType, "litert", metadata.version("ai-edge-litert")
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter, OpResolverType

        return Interpreter, OpResolverType, "tflite_runtime", metadata.version("tflite-runtime")
    except ImportError:
        raise MissingExtraError("LiteRT is not installed: pip install 'latbench[tflite]' (ai-edge-litert)") from None


@dataclass(frozen=True)
class LiteRTOptions(AgentOptions):
    """tflite: the XNNPACK delegate (LiteRT's default) or the builtin kernels only."""

    xnnpack: bool = True


class LiteRTAgent(Agent):
    """Times ops in the LiteRT interpreter; `xnnpack=False` runs the builtin kernels only."""

    name = "tflite"
    model_kind = "tflite"
    fusion = "tflite"  # converters fold BN into the conv and fuse RELU/RELU6 (tflite_build does too)
    runs_nodes = True  # times node ops of domain "tflite": the operators of a .tflite model (lower_model)
    # XNNPACK prices a whole model closer from operators timed back to back: benchmarks/zoo.py
    # --runtime tflite read median 3.1% / worst 8.2% warm against 3.8-6.0% / 13-14% in network
    # context (LeViT-128S +13% twice there, -3% warm) on the 2-core EPYC host, 2026-12-05
    model_context = "warm"

    Options = LiteRTOptions

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.xnnpack = self.opts.xnnpack
        self._Interpreter, self._Resolver, self._runtime_name, self._version = _runtime()

    @classmethod
    def options_from_profile(cls, profile: DeviceProfile) -> dict[str, Any]:
        """threads and whether XNNPACK ran (the profile's delegate)."""
        return {"threads": profile.threads, "xnnpack": profile.delegate == "xnnpack"}

    def fingerprint(self) -> DeviceProfile:
        return host_profile("tflite", self._runtime_name, self._version, self.threads,
                            delegate="xnnpack" if self.xnnpack else "builtin")

    # ---------------------------------------------------------------- interpreter
    def interpreter(self, model: bytes | str | os.PathLike, preserve_all_tensors: bool = False,
                    input_shape: Sequence[int] | None = None):
        """An allocated interpreter for model bytes or a .tflite path, with this agent's settings;
        `preserve_all_tensors` keeps every intermediate tensor readable after invoke (LiteRT then
        runs its builtin kernels, no delegate); `input_shape` resizes the one input first."""
        resolver = self._Resolver.AUTO if self.xnnpack else self._Resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        src = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": os.fspath(model)}
        extra = {"experimental_preserve_all_tensors": True} if preserve_all_tensors else {}
        with warnings.catch_warnings():  # preserving tensors is what lowering asks for, not a mistake
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            it = self._Interpreter(**src, num_threads=self.threads, experimental_op_resolver_type=resolver, **extra)
        if input_shape is not None:
            it.resize_tensor_input(it.get_input_details()[0]["index"], [int(d) for d in input_shape])
        it.allocate_tensors()
        return it

    def _feed_random(self, it) -> None:
        """Fill every input once with seeded random data; floats uniform in [-1, 1), drawn in
        float32 (3x cheaper than normals: input generation is most of `prepare` for big maps)."""
        rng = np.random.default_rng(self.seed)
        for d in it.get_input_details():
            shape, dtype = tuple(d["shape"]), np.dtype(d["dtype"])
            if dtype.kind == "f":
                x = rng.random(shape, dtype=np.float32)
                x *= 2.0
                x -= 1.0
                x = x.astype(dtype, copy=False)
            else:
                x = rng.integers(0, 2, size=shape).astype(dtype)
            it.set_tensor(d["index"], x)

    # ---------------------------------------------------------------- Agent API
    def model(self, op: OpSpec) -> bytes:
        """The .tflite bytes this agent times for `op` (canonical weights of its seed)."""
        return build_tflite(op, self.weights(op))

    def prepare_op(self, op: OpSpec) -> Prepared:
        """An interpreter for `op`'s model on seeded inputs (a node op: its one-operator model,
        tflite_graph.tflite_node_model); calling it invokes once, `touch` re-reads the inputs."""
        if op.kind == "node":
            return self._prepare_node(op)
        return self.prepare_model(self.model(op))

    # ---------------------------------------------------------------- nodes
    def runs_node(self, spec) -> bool:
        """LiteRT operators (domain "tflite"), not ONNX Runtime's nodes."""
        return spec.domain == "tflite"

    def _prepare_node(self, op: OpSpec) -> Prepared:
        nm = tflite_node_model(op.graph_node, self.pool)
        it = self.interpreter(nm.model)
        for idx, arr in nm.feeds.items():
            it.set_tensor(idx, arr)
        views = [it.tensor(idx) for idx in nm.feeds]

        def touch() -> None:
            for v in views:
                v().sum()

        return Prepared(it.invoke, touch, keep=(it, nm), note={"graph": "runtime node"})

    def run_node(self, op: OpSpec) -> list[np.ndarray]:
        """One invoke of a node op on its seeded inputs: its outputs (spec order, None skipped)."""
        prepared = self._prepare_node(op)
        prepared()
        it, nm = prepared.keep
        return [it.get_tensor(i).copy() for i in nm.outputs]

    def lower_model(self, model: bytes | str | os.PathLike, input_shape: Sequence[int] | None = None):
        """A .tflite model as LiteRT runs it: one node op per operator of its main subgraph
        (tflite_graph.lower_tflite), shapes, dtypes and small integer values from one seeded run
        in this agent's interpreter. An input shape must be the model's (or fill its dynamic dims)."""
        from latbench.errors import FormatError, UsageError

        if isinstance(model, (bytes, bytearray)):
            data, name = bytes(model), "<tflite bytes>"
        else:
            name = os.fspath(model)
            try:
                with open(name, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise UsageError(f"{name}: cannot read it ({e.strerror or e})") from None
        m = read_model(data, name)
        shape = _check_input_shape(m, name, input_shape)
        try:
            return lower_tflite(data, lambda b: self.interpreter(b, preserve_all_tensors=True, input_shape=shape),
                                self.pool, name)
        except (FormatError, UsageError):
            raise
        except Exception as e:  # noqa: BLE001 - the interpreter's own errors, said in one line
            raise FormatError(f"{name}: LiteRT cannot run it ({' '.join(str(e).split())[:300]})") from None

    def network_model(self, space, config) -> NetworkModel:
        """The subnet as one .tflite (networks.tflite_network, canonical weights of this seed)."""
        return NetworkModel("tflite", tflite_network(space, config, self.seed), tuple(space.input_shape(config)))

    def prepare_model(self, model: NetworkModel | bytes | str | os.PathLike,
                      input_shape: Sequence[int] | None = None) -> Prepared:
        """An interpreter for a model (a NetworkModel, bytes or path) on seeded inputs: the plain
        call `invoke()`; `touch` re-reads its input buffers in place (views are taken and dropped
        at once: invoke refuses to run while one is held). The model fixes its input shape."""
        it = self.interpreter(model.model if isinstance(model, NetworkModel) else model)
        self._feed_random(it)
        views = [it.tensor(d["index"]) for d in it.get_input_details()]

        def touch() -> None:
            for v in views:
                v().sum()

        return Prepared(it.invoke, touch, keep=it)

    def run(self, op: OpSpec, x: np.ndarray) -> np.ndarray:
        """NCHW in, NHWC through the model, NCHW out ((n, out) for linear, as torch gives)."""
        return self.run_bytes(self.model(op), x)

    def run_network(self, model: NetworkModel, x: np.ndarray) -> np.ndarray:
        return self.run_bytes(model.model, x)

    def run_bytes(self, model: bytes, x: np.ndarray) -> np.ndarray:
        """One invoke of a .tflite on the NCHW input `x` (NHWC inside), output NCHW or (n, out)."""
        it = self.interpreter(model)
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1)))
        it.invoke()
        y = it.get_tensor(it.get_output_details()[0]["index"])
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2)) if y.ndim == 4 else y.copy()


def _check_input_shape(m, name: str, input_shape: Sequence[int] | None) -> tuple[int, ...] | None:
    """None (run the model as it is), or the shape to resize its one input to; an input shape
    that disagrees with a fixed dim of the model's input is a UsageError."""
    from latbench.errors import UsageError

    if input_shape is None:
        return None
    shape = tuple(int(d) for d in input_shape)
    sg = m.subgraphs[0]
    if len(sg.inputs) != 1:
        raise UsageError(f"{name}: an input shape sets the shape of a model with one input; this one has "
                         f"{len(sg.inputs)}")
    t = sg.tensors[sg.inputs[0]]
    fixed = [int(d) for d in t.shape]
    sig = [int(d) for d in t.shapeSignature] if t.shapeSignature is not None and len(t.shapeSignature) else fixed
    given, have = ",".join(map(str, shape)), "x".join(str(d) if d >= 0 else "?" for d in sig)
    if len(shape) != len(sig) or any(d < 1 for d in shape) or any(s >= 0 and s != d for s, d in zip(sig, shape)):
        raise UsageError(f"{name}: its input is fixed at {have}; the input shape {given} disagrees")
    return None if list(shape) == fixed else shape


__all__ = ["LiteRTAgent"]
