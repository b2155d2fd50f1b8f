"""A whole model -> the op list a device's runtime runs (`latbench ops --model`, `profile --model`).

Two lowerings, picked by the device and the model's form (`reads_graph`):
- the runtime's own graph, one node op (latbench.nodes) per node, where the device's agent reads
  it: ort lowers an ONNX model (a torch module exported by the recipe below, so a module and its
  export give the same nodes) as the installed ONNX Runtime optimised it; tflite and android
  (benchmark_model) lower a .tflite file operator by operator; cpu/cuda lower a torch module as
  the ATen calls eager makes (torch.export). Fusions, folding and layout reorders are then exactly
  the runtime's, never a hand-kept list;
- otherwise (an ONNX file on a torch or tflite device) latbench's typed ops
  (latbench.lower.lower_onnx), fused as the runtime fuses them (latbench.ops.fuse).

The export recipe (what `export_module` does; do the same to export by hand):
    model.eval()
    torch.onnx.export(model, (torch.zeros(input_shape),), "model.onnx", dynamo=False,
                      opset_version=17, do_constant_folding=True)
(torch 2.13's default exporter is the dynamo one, which needs onnxscript; dynamo=False is the
TorchScript exporter, opset 17, which needs only onnx.)
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import LatbenchError, UsageError, require
from .lower import Unmapped
from .ops import OpSpec, fuse, unique

OPSET = 17


class ModelCallError(LatbenchError):
    """The user's own code (the module or callable `--model module:callable` names) raised: said
    in one line naming the call, exit 1, never as latbench's internal error."""


@contextlib.contextmanager
def kept_modes(module):
    """Run the body (an export or a trace, which puts `module` in eval mode) and give every
    submodule its own training flag back: pricing a supernet mid-training leaves BN and Dropout
    as they were."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def export_module(module, input_shape: Sequence[int], input_names: Sequence[str] | None = None,
                  output_names: Sequence[str] | None = None) -> bytes:
    """A torch module exported to ONNX bytes by the recipe above (eval mode, a zero input of
    `input_shape`, one intra-op thread while tracing; `input_names`/`output_names` as the exporter
    takes them). The module's training flags are restored afterwards (`kept_modes`)."""
    torch = require("torch", "torch")
    require("onnx", "ort")
    if not input_shape:
        raise UsageError("exporting a torch module needs its input shape (`input_shape`, e.g. 1,3,224,224)")
    from .spaces.torch_build import register_onnx_symbolics

    register_onnx_symbolics()  # nn.ChannelShuffle (FBNet's g2 blocks) exports as Reshape-Transpose-Reshape
    buf = io.BytesIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with kept_modes(module), warnings.catch_warnings(), torch.no_grad():
            module.eval()
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module, (torch.zeros(tuple(int(d) for d in input_shape)),), buf, dynamo=False,
                              opset_version=OPSET, do_constant_folding=True,
                              input_names=list(input_names) if input_names else None,
                              output_names=list(output_names) if output_names else None)
    except Exception as e:  # noqa: BLE001 - whatever tracing a user's module raises, said in one line
        raise UsageError(f"exporting {type(module).__name__} to ONNX failed: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]}") from None
    finally:
        torch.set_num_threads(threads)
    return buf.getvalue()


def load_callable(spec: str):
    """The torch module `module:callable` names: the module imported (the current directory first
    on the path), the callable called with no arguments; it must return a torch.nn.Module."""
    torch = require("torch", "torch")
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise UsageError(f"--model {spec!r}: give an ONNX file or module:callable (a function returning a torch module)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UsageError(f"--model {spec}: cannot import {mod_name!r} ({e})") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing
        raise ModelCallError(f"--model {spec}: importing {mod_name} raised {_raised(e)}") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise UsageError(f"--model {spec}: {mod_name} has no callable {attr!r}")
    try:
        model = fn()
    except Exception as e:  # noqa: BLE001 - the user's factory raised: theirs to fix, said in one line
        raise ModelCallError(f"{spec}(): raised {_raised(e)}") from None
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"--model {spec}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def is_tflite_source(model) -> bool:
    """A .tflite file (by its suffix) or .tflite bytes (the TFL3 file identifier)."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model[4:8]) == b"TFL3"
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model).endswith(".tflite")
    return False


def is_onnx_source(model) -> bool:
    """An ONNX file, bytes or ModelProto, as opposed to a torch module or a module:callable spec."""
    if is_tflite_source(model):
        return False
    if isinstance(model, (bytes, bytearray)):
        return True
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model).endswith(".onnx") or os.path.isfile(os.fspath(model))
    return type(model).__name__ == "ModelProto"


@dataclass
class ModelOps:
    """A model's op list as a runtime runs it: `ops` in graph order (fused as `fusion`), what was
    free (views, constants), and the compute nodes no latbench op describes yet."""

    name: str
    fusion: str
    ops: list[OpSpec]
    free: int = 0
    unmapped: list[Unmapped] = field(default_factory=list)
    input_shape: tuple[int, ...] | None = None

    @property
    def unique(self) -> list[OpSpec]:
        return unique(self.ops)

    @property
    def weight_bytes(self) -> int:
        """float32 bytes of the model's weights (its ops' parameters): what a run of the model
        streams through the caches between two runs of one of its ops (`profile --model`'s
        network context)."""
        return 4 * sum(op.params for op in self.ops)

    def unmapped_counts(self) -> list[tuple[str, int]]:
        """Unmapped compute nodes by op type, most frequent first."""
        counts: dict[str, int] = {}
        for u in self.unmapped:
            counts[u.op_type] = counts.get(u.op_type, 0) + 1
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))

    def summary(self) -> str:
        """One line: ops, unique ops, free nodes, and what is unmapped by type and count."""
        gaps = ", ".join(f"{t} x{n}" for t, n in self.unmapped_counts())
        return (f"{self.name}: {len(self.ops)} ops ({len(self.unique)} unique) as {self.fusion!r} runs them, "
                f"{self.free} shape-only nodes free; "
                + (f"unmapped: {gaps} (not priced, not profiled)" if gaps else "every compute node mapped"))


def onnx_source(model, input_shape: Sequence[int] | None = None):
    """`model` as ONNX: an ONNX path/bytes/ModelProto as it is; a torch module or a
    "module:callable" spec exported by the recipe above (`export_module`)."""
    if is_onnx_source(model):
        return model
    name = _name(model)
    module = torch_source(model)
    _need_shape(name, input_shape)
    return export_module(module, input_shape)


def _need_shape(name: str, input_shape: Sequence[int] | None) -> None:
    """A torch module is run (exported or recorded) on an input of its shape: refuse none."""
    if input_shape is None:
        raise UsageError(f"{name}: a torch module needs its input shape (`input_shape`, e.g. 1,3,224,224)")


def reads_graph(agent, model) -> bool:
    """Whether `agent` lowers `model` as its runtime's own graph, node by node: it runs nodes
    and the model is in a form its runtime takes (.tflite for LiteRT; ONNX, or a torch module
    exported to it, for ort; a torch module for torch eager)."""
    if agent is None or not getattr(agent, "runs_nodes", False):
        return False
    if is_tflite_source(model):
        return agent.model_kind == "tflite"
    if is_onnx_source(model):
        return agent.model_kind == "onnx"
    return agent.model_kind in ("onnx", "torch")


def torch_source(model):
    """A torch module, or the one a "module:callable" spec returns; any other path or string (a
    file that is not there, a directory) is one UsageError naming it."""
    if isinstance(model, str) and ":" in model:
        return load_callable(model)
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        what = "a directory, not a model file" if os.path.isdir(path) else "no such file"
        raise UsageError(f"{path}: {what} (an ONNX or .tflite model), and not a module:callable")
    return model


def lower_model(model, input_shape: Sequence[int] | None = None, agent=None):
    """`model` (see `onnx_source`; or a .tflite file or bytes) lowered: where `agent` reads its
    runtime's graph (`reads_graph`), the nodes of that graph (`agent.lower_model`); otherwise
    latbench's typed ops, unfused (latbench.lower.lower_onnx). The Lowering (ops, free, unmapped)."""
    from .lower import lower_onnx

    if reads_graph(agent, model):
        if agent.model_kind == "torch":
            module = torch_source(model)
            _need_shape(_name(model), input_shape)
            with kept_modes(module):
                return agent.lower_model(module, input_shape)
        return agent.lower_model(model if is_tflite_source(model) else onnx_source(model, input_shape), input_shape)
    if is_tflite_source(model):
        raise UsageError(f"{_name(model)}: a .tflite model is lowered as LiteRT runs it, node by node: "
                         f"give a LiteRT device (--device tflite)")
    return lower_onnx(onnx_source(model, input_shape), input_shape)


def model_ops(model, input_shape: Sequence[int] | None = None, device: str | None = None,
              **options: Any) -> ModelOps:
    """`model`'s op list as `device` (its agent built with `options`) runs it: the nodes of its
    runtime's graph where the agent reads it (`reads_graph`), else typed ops fused as the runtime
    fuses them; without a device, typed ops unfused."""
    name, shape = _name(model), tuple(input_shape) if input_shape else None
    if device is None:
        low = lower_model(model, input_shape)
        return ModelOps(name, "none", list(low.ops), len(low.free), list(low.unmapped), shape)
    from device_agents import agent_class, get_agent

    if getattr(agent_class(device), "runs_nodes", False):
        agent = get_agent(device, **options)
        try:
            if reads_graph(agent, model):
                low = lower_model(model, input_shape, agent)
                level = getattr(agent, "opt_level", None)
                how = f"{device} graph" + (f" (opt level {level})" if level else "")
                return ModelOps(name, how, list(low.ops), len(low.free), list(low.unmapped), shape)
            fusion = agent.fusion
        finally:
            agent.close()
    else:
        fusion = device_fusion(device, **options)
    low = lower_model(model, input_shape)
    return ModelOps(name, fusion, fuse(list(low.ops), fusion), len(low.free), list(low.unmapped), shape)


def device_fusion(device: str, **options: Any) -> str:
    """The fusion device `device`'s runtime applies (with its options, e.g. opt_level)."""
    from device_agents import agent_class, get_agent

    cls = agent_class(device)
    if "fusion" in vars(cls) and not options:
        return cls.fusion
    agent = get_agent(device, **options)
    try:
        return getattr(agent, "fusion", "none")
    finally:
        agent.close()


def _raised(e: BaseException) -> str:
    """'RuntimeError: what it said', on one line."""
    text = " ".join(str(e).split())[:300]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _name(model) -> str:
    if isinstance(model, (bytes, bytearray)):
        return "<ONNX bytes>"
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return type(model).__name__


__all__ = ["ModelCallError", "ModelOps", "OPSET", "device_fusion", "export_module", "is_tflite_source",
           "kept_modes", "load_callable", "lower_model", "model_ops", "onnx_source", "reads_graph"]
