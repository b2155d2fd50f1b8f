"""Torch eager agents (cpu, cuda) and the torch reference every agent's output is compared with.

Global torch state (thread count, grad mode, the CPU RNG, CUDA TF32 switches) is process-wide, so
an agent sets what it needs only while it works on an op (prepare_op + timing inside `measure`,
which holds `state()` around each batch, or one `run`) and restores the previous values before handing a result back. Two agents with
different thread counts can therefore be interleaved in one process, and nothing leaks after
`close()`, which has nothing left to undo.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from latbench import ops as O
from latbench.device import DeviceProfile, host_profile
from latbench.errors import DeviceUnavailableError, OpError, UsageError, require
from latbench.ops import OpSpec

from .base import Agent, AgentOptions, NetworkModel, Prepared
from .weights import BN_EPS, Weights

torch = require("torch", "torch")
nn = torch.nn


# ---------------------------------------------------------------------- the reference
class _Root(nn.Module):
    """Wraps one module so that tracing sees it as a call_module node even when it is a leaf."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.op = inner

    def forward(self, x):
        return self.op(x)


def _plain(op: OpSpec) -> OpSpec:
    """The op without its OFA role: the role names a layer, it does not change the computation."""
    return op.replace(role="") if op.role else op


def _tensor(a: np.ndarray, like) -> Any:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(like.device, like.dtype)


def _load(target, name: str, value: np.ndarray, where: str) -> None:
    """Copy `value` into `target.name`, refusing a shape mismatch (copy_ would broadcast)."""
    t = getattr(target, name, None)
    if t is None:
        raise OpError(f"{where}: module has no {name!r} but the canonical weights have one")
    if tuple(t.shape) != tuple(value.shape):
        raise OpError(f"{where}: {name} shape {tuple(t.shape)} != canonical {tuple(value.shape)}")
    t.copy_(_tensor(value, t))


def reference_module(op: OpSpec, weights: Weights) -> nn.Module:
    """`module_for(op)` in eval mode with the canonical weights loaded (the conformance reference).

    Traces the module to find which submodule holds each op of `expand(op)`; a traced op list that
    differs from `expand(op)` raises OpError naming both, so the timed module is the listed one.
    """
    from latbench.lower import lower_torch
    from latbench.spaces.torch_build import module_for

    parts = O.expand(op)
    if len(weights) != len(parts):
        raise OpError(f"{op.key}: {len(weights)} weight dicts for {len(parts)} expanded ops")
    with torch.random.fork_rng(devices=[]):  # module init and tracing draw from the global RNG
        module = module_for(op).eval()
        with torch.inference_mode():
            try:
                module(torch.zeros(op.in_shape))
            except Exception as e:  # the runtime's own words, not the tracer's wrapper
                raise OpError(f"torch cannot run {op.key}: {type(e).__name__}: {e}") from e
        root = _Root(module)
        low = lower_torch(root, op.in_shape)
    want = [_plain(p) for p in parts]  # expand() lists a BN's activation as its own op, as torch traces it
    got = [_plain(p) for p in low.ops]
    if got != want or low.unmapped:
        raise OpError(f"{op.key}: torch module traces to [{', '.join(p.key for p in got)}]"
                      f" (unmapped: {', '.join(u.label for u in low.unmapped) or 'none'}) but expand() "
                      f"gives [{', '.join(p.key for p in want)}]")
    # the traced list equals expand() (checked above): sources align with the weights one to one
    sources = iter(zip(low.ops, low.sources))
    with torch.no_grad():
        for part, w in zip(parts, weights):
            _, src = next(sources)
            where = f"{op.key} [{src}]"
            if part.kind == "eltwise" and "other" in w:
                _load(module, "other", w["other"], where)
                continue
            if not w:
                continue
            m = root.get_submodule(src)
            if part.kind in ("conv", "linear"):
                _load(m, "weight", w["weight"], where)
                if ("bias" in w) != (m.bias is not None):
                    raise OpError(f"{where}: bias presence differs between module and weights")
                if "bias" in w:
                    _load(m, "bias", w["bias"], where)
            elif part.kind == "batch_norm":
                if abs(m.eps - BN_EPS) > 1e-12:
                    raise OpError(f"{where}: BatchNorm eps {m.eps} != canonical {BN_EPS}")
                for name, key in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "mean"),
                                  ("running_var", "var")):
                    _load(m, name, w[key], where)
            else:
                raise OpError(f"{where}: unexpected canonical weights for a {part.kind}")
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


# ---------------------------------------------------------------------- agents
class TorchCPUAgent(Agent):
    """Torch eager on the host CPU, `threads` intra-op threads; inputs are fixed per seed."""

    name = "cpu"
    device_type = "cpu"
    model_kind = "torch"
    runs_nodes = True  # times ATen calls (latbench.nodes, domain aten): a module as eager runs it

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.device = torch.device(self.device_type)

    def runs_node(self, spec) -> bool:
        """ATen calls, as torch.export records a module (device_agents.torch_graph)."""
        return spec.domain == "aten"

    def lower_model(self, model, input_shape: Sequence[int] | None = None):
        """A torch module as eager runs it: the ATen calls torch.export records, one node op each
        (device_agents.torch_graph.lower_module); `input_shape` is required."""
        from .torch_graph import lower_module

        if input_shape is None:
            raise UsageError(f"{self.name}: a torch module needs its input shape (e.g. 1,3,224,224)")
        with torch.random.fork_rng(devices=[]):
            return lower_module(model, input_shape)

    def _prepare_node(self, op: OpSpec) -> Prepared:
        """One ATen call of a node op on fresh tensors of its shapes (torch_graph.node_call); the
        first call surfaces errors and warms up; `touch` re-reads its data inputs."""
        from .torch_graph import node_call

        spec = op.graph_node
        with self._state():
            call, made = node_call(spec, self.device, self.pool)
            call()
            self._sync_now()
        present = [t for t in spec.inputs if t is not None]
        data = [v for t, v in zip(present, made) if not t.const and t.is_float]

        def touch() -> Any:
            return [v.sum() for v in data]

        return Prepared(call, touch, keep=made, note={"graph": "runtime node"})

    def run_node(self, op: OpSpec) -> list[np.ndarray]:
        """One call of a node op on its seeded tensors: its tensor outputs as arrays (conformance)."""
        from .torch_graph import node_call

        with self._state():
            call, _ = node_call(op.graph_node, self.device, self.pool)
            y = call()
        ys = y if isinstance(y, (list, tuple)) else (y,)
        return [t.detach().cpu().numpy() for t in ys if isinstance(t, torch.Tensor)]

    # ------------------------------------------------------------ identity
    def fingerprint(self) -> DeviceProfile:
        """The host profile of torch eager with this thread count; oneDNN/MKL facts go in info."""
        return host_profile(self.name, "torch", torch.__version__, self.threads, delegate="eager",
                            info=self._info())

    def _info(self) -> dict[str, Any]:
        b = torch.backends
        return {"mkldnn": bool(b.mkldnn.is_available()), "mkldnn_enabled": bool(b.mkldnn.enabled),
                "mkl": bool(b.mkl.is_available()), "openmp": bool(b.openmp.is_available()),
                "cpu_capability": b.cpu.get_cpu_capability()}

    # ------------------------------------------------------------ global state, scoped
    @contextlib.contextmanager
    def _state(self) -> Iterator[None]:
        """This agent's torch settings for the duration of one step; the previous ones after."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                yield
        finally:
            torch.set_num_threads(before)

    # ------------------------------------------------------------ ops
    def input(self, op: OpSpec) -> np.ndarray:
        """The fixed random NCHW input this agent times `op` on (same seed, same input)."""
        rng = np.random.default_rng([self.seed, 1])
        return rng.standard_normal(op.in_shape, dtype=np.float32)

    def _module(self, op: OpSpec) -> nn.Module:
        return reference_module(op, self.weights(op)).to(self.device)

    def prepare_op(self, op: OpSpec) -> Prepared:
        """The reference module on a fixed input, run once; the closure is meant to be called
        inside `measure` (which holds the thread count and inference mode around it)."""
        if op.kind == "node":
            return self._prepare_node(op)
        with self._state():
            module = self._module(op)
            x = torch.from_numpy(self.input(op)).to(self.device)
            y = module(x)  # surfaces runtime errors here, and is the first warm-up call
            if tuple(y.shape[:2]) != op.out_shape[:2]:
                raise OpError(f"{op.key}: output shape {tuple(y.shape)} != {op.out_shape}")
            self._sync_now()

        def call() -> Any:
            return module(x)

        return Prepared(call, x.sum, keep=module)

    def network_model(self, space, config) -> NetworkModel:
        """The torch subnet (`space.build`), built once; each runnable gets its own copy."""
        module = space.build(config).eval()
        return NetworkModel("torch", module, tuple(space.input_shape(config)), module)

    def run_network(self, model: NetworkModel, x: np.ndarray) -> np.ndarray:
        """One call of the module on `x` on this device, under this agent's state."""
        with self._state():
            module = model.model.eval().to(self.device)
            y = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))
            return y.detach().cpu().numpy()

    def prepare_model(self, model: "NetworkModel | nn.Module", input_shape: Sequence[int] | None = None) -> Prepared:
        """A whole torch module (a NetworkModel's copy, so its buffers get their own place in
        memory, or the given module itself) in eval mode on this device with a fixed random
        input; the plain call `module(x)`, made inside `state()` (inference mode)."""
        if isinstance(model, NetworkModel):
            model, input_shape = copy.deepcopy(model.model), input_shape or model.input_shape
        if input_shape is None:
            raise UsageError(f"{self.name}: a torch module needs its input_shape")
        module = model.eval().to(self.device)
        rng = np.random.default_rng([self.seed, 1])
        x = torch.from_numpy(rng.standard_normal(tuple(input_shape), dtype=np.float32)).to(self.device)

        def call() -> Any:
            return module(x)

        return Prepared(call, x.sum, keep=module)

    def state(self):
        """The agent's thread count and inference mode while inside (restored after)."""
        return self._state()

    def run(self, op: OpSpec, x: np.ndarray) -> np.ndarray:
        """One inference of `op` on `x` (NCHW float32); output as the torch module returns it."""
        with self._state():
            module = self._module(op)
            y = module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device))
            return y.detach().cpu().numpy()

    def _sync_now(self) -> None:
        """Wait for queued device work (nothing to wait for on the CPU)."""


@dataclass(frozen=True)
class CudaOptions(AgentOptions):
    """cuda: which visible CUDA device."""

    index: int = 0

    def check(self, agent: str) -> None:
        super().check(agent)
        if self.index < 0:
            raise UsageError(f"{agent}: index must be >= 0 (a visible CUDA device), got {self.index}")


class TorchCUDAAgent(TorchCPUAgent):
    """Torch eager on one CUDA device in full float32 (TF32 off while measuring); the timing loop
    synchronizes the device before each clock read."""

    name = "cuda"
    device_type = "cuda"

    Options = CudaOptions

    def __init__(self, **options: Any):
        super().__init__(**options)  # options checked first: a bad one is a usage error anywhere
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"no CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'})"
                " reports torch.cuda.is_available() == False")
        count = torch.cuda.device_count()
        if not 0 <= self.opts.index < count:
            raise DeviceUnavailableError(f"no CUDA device: index {self.opts.index} but {count} device(s) visible")
        self.index = self.opts.index
        self.device = torch.device("cuda", self.index)

    @classmethod
    def options_from_profile(cls, profile: DeviceProfile) -> dict[str, Any]:
        """threads and the device index the profile recorded."""
        index = (profile.info or {}).get("index")
        return {"threads": profile.threads, **({"index": index} if index is not None else {})}

    def fingerprint(self) -> DeviceProfile:
        """The host profile plus the GPU's name, capability and CUDA/cuDNN versions (identity)."""
        props = torch.cuda.get_device_properties(self.index)
        options = {"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                   "cuda": torch.version.cuda or "", "cudnn": str(torch.backends.cudnn.version() or ""),
                   "tf32": "off"}
        info = {**self._info(), "gpu_memory_mb": props.total_memory // 2**20, "index": self.index}
        return host_profile(self.name, "torch", torch.__version__, self.threads, delegate="cuda",
                            options=options, info=info)

    @contextlib.contextmanager
    def _state(self) -> Iterator[None]:
        """The CPU agent's state plus this device as current and TF32 off (restored after)."""
        cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.cuda.device(self.index), super()._state():
                yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul

    def synchronizer(self) -> Callable[[], Any] | None:
        """torch.cuda.synchronize on this device: a block's time includes its kernels, not only launches."""
        return self._sync_now

    def _sync_now(self) -> None:
        torch.cuda.synchronize(self.index)


__all__ = ["reference_module", "TorchCPUAgent", "TorchCUDAAgent"]
