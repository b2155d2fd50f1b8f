"""LiteRT (TFLite) agent: each op becomes a single-op .tflite model (device_agents.tflite_build)
run by the LiteRT interpreter on this host, with XNNPACK (the default delegate) or the builtin
kernels. The same model bytes are what an Android agent pushes to benchmark_model."""
from __future__ import annotations

import os
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
    def interpreter(self, model: bytes | str | os.PathLike):
        """An allocated interpreter for model bytes or a .tflite path, with this agent's settings."""
        resolver = self._Resolver.AUTO if self.xnnpack else self._Resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        src = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": os.fspath(model)}
        it = self._Interpreter(**src, num_threads=self.threads, experimental_op_resolver_type=resolver)
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
        return self.prepare_model(self.model(op))

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


__all__ = ["LiteRTAgent"]
