"""Export a subnet: the space's own `build(config)` module with the supernet's weights, saved as
a torch weights file, an ONNX model (TorchScript exporter, opset 17) or a .tflite (latbench's own
flatbuffer builder, device_agents.tflite_build, by default; litert-torch when asked for).

The export is checked: the standalone module (and, for ONNX, ONNX Runtime when installed; for a
.tflite of latbench's builder, the LiteRT interpreter) must reproduce the supernet's output for
that config; the report carries the max abs differences.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Any

import numpy as np

from ..errors import LatbenchError, MissingExtraError, UsageError, require
from .checkpoint import space_from_meta, space_meta

torch = require("torch", "torch")

FORMATS = ("torch", "onnx", "tflite")
CONVERTERS = ("latbench", "litert-torch")  # .tflite writers: latbench's builder, litert-torch
TOLERANCE = 1e-5
# the LiteRT check of latbench's .tflite: max abs diff <= rtol * max|supernet output| + TFLITE_ATOL,
# rtol = max(TFLITE_RTOL, TFLITE_COND * the module's own float32 error against float64). float32
# through BN folded into the conv (scaled weights round differently) and XNNPACK's summation order
# drift by ~1e-7 relative per layer: 2e-7..3e-6 relative over a subnet (measured on tiny and
# ofa-mbv3-w10 at 128, random weights and BN statistics). 1e-4 is the builder's own conformance
# bound (tests/test_litert_agent.py RTOL), an order of magnitude under what a wrong weight does
# (one swapped channel pair: ~0.4 relative). A badly conditioned net amplifies rounding: where
# torch's own float32 result is already 1e-5 off its float64 one, XNNPACK was seen 1e-4 off, so
# the bound grows with that measured error (x20, at most to 1e-3) instead of failing a correct export.
TFLITE_RTOL = 1e-4
TFLITE_COND = 20.0
TFLITE_RTOL_MAX = 1e-3
TFLITE_ATOL = 1e-6


class ExportMismatchError(LatbenchError):
    """The exported subnet does not reproduce the supernet's output."""


def _tflite_converter():
    """litert-torch's convert (or its older name, ai-edge-torch), or None."""
    for name in ("litert_torch", "ai_edge_torch"):
        try:
            return __import__(name).convert
        except ImportError:
            continue
        except Exception:  # a broken install: treat as missing, the message says how to fix it
            continue
    return None


def litert_torch_available() -> bool:
    """Whether litert-torch (converter="litert-torch") is installed."""
    return _tflite_converter() is not None


def tflite_available() -> bool:
    """Whether `--format tflite` can write a model here: latbench's builder needs the TFLite
    schema and LiteRT interpreter of ai-edge-litert (the `tflite` extra), not TensorFlow."""
    try:
        _litert_agent_class()
    except MissingExtraError:
        return False
    return True


def _litert_agent_class():
    """device_agents.litert.LiteRTAgent, or MissingExtraError without ai-edge-litert / flatbuffers."""
    try:
        from device_agents.litert import LiteRTAgent
    except MissingExtraError:
        raise
    except ImportError as e:
        raise MissingExtraError(f"tflite export needs ai-edge-litert and flatbuffers ({e.name or e} is missing): "
                                f"pip install 'latbench[tflite]'; nothing was written") from None
    return LiteRTAgent


def subnet_tflite(space, config: Any, module) -> bytes:
    """The subnet `config` as one .tflite of latbench's builder (the model agents time end to end,
    device_agents.networks.tflite_network) with `module`'s weights: `module` is
    `space.build(config)` / SuperNet.export_module(config), one torch_build module per block;
    BN is folded into the convs, activations NHWC (input (1, H, W, C))."""
    _litert_agent_class()
    from device_agents.tflite_build import build_tflite_chain
    from device_agents.torch_weights import network_weights

    blocks = space.blocks(config)
    return build_tflite_chain(blocks, network_weights(blocks, module))


def run_tflite(model: bytes, x) -> np.ndarray:
    """One LiteRT invoke (XNNPACK, one thread, as the tflite agent runs it) of `model` on the NCHW
    input `x` (NHWC inside); the output NCHW or (n, classes), as torch gives it."""
    agent = _litert_agent_class()(threads=1)
    return agent.run_bytes(model, np.asarray(x, dtype=np.float32))


def export_subnet(net, config: Any, path: str | os.PathLike, fmt: str = "onnx", *, calib_x=None,
                  opset: int = 17, check: bool = True, seed: int = 0, converter: str = "latbench") -> dict[str, Any]:
    """Write subnet `config` of SuperNet `net` to `path` in `fmt`; returns a report (config,
    input shape, max abs differences). With `calib_x`, BN statistics are re-estimated first.
    tflite: `converter` "latbench" (latbench's builder, checked in LiteRT against the supernet:
    `tflite_max_abs_diff`, ExportMismatchError above `tflite_tolerance`; nothing written then)
    or "litert-torch" (unchecked beyond the torch module)."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if converter not in CONVERTERS:
        raise UsageError(f"the tflite converter must be one of {', '.join(CONVERTERS)}, got {converter!r}")
    path = os.fspath(path)
    convert = None
    if fmt == "tflite" and converter == "litert-torch":
        convert = _tflite_converter()
        if convert is None:
            raise MissingExtraError("tflite export with litert-torch needs litert-torch, which is not installed "
                                    "(pip install litert-torch); nothing was written. "
                                    "Leave the converter at latbench's own builder instead.")
    elif fmt == "tflite":
        _litert_agent_class()  # missing ai-edge-litert: said before any work
    from .evaluator import calib_bn

    net.set_active(config)
    if calib_x is not None:
        calib_bn(net, calib_x)
    net.eval()
    module = net.export_module(config)
    shape = net.input_shape(1)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = net(x)
        got = module(x)
    report: dict[str, Any] = {
        "format": fmt, "path": path, "space": net.space.name, "config": net.space.to_published(net.config),
        "index": [int(v) for v in net.config], "input_shape": list(shape),
        "max_abs_diff": float((ref - got).abs().max()),
    }
    if check and report["max_abs_diff"] >= TOLERANCE:
        raise ExportMismatchError(f"exported subnet differs from the supernet by {report['max_abs_diff']:.3g}")
    model = None
    if fmt == "tflite":
        report["converter"] = converter
        if converter == "latbench":
            want = ref.numpy()
            scale = float(np.abs(want).max())
            with torch.no_grad():  # how far float32 itself is from exact on this net: its conditioning
                exact = copy.deepcopy(module).double()(x.double()).numpy()
            f32_err = float(np.abs(got.numpy() - exact).max()) / max(scale, 1e-30)
            tol = min(max(TFLITE_RTOL, TFLITE_COND * f32_err), TFLITE_RTOL_MAX) * scale + TFLITE_ATOL
            model = subnet_tflite(net.space, net.config, module)
            out = run_tflite(model, x.numpy())
            if out.shape != want.shape:
                raise ExportMismatchError(f"the .tflite gives an output of shape {out.shape}, the supernet {want.shape}")
            diff = float(np.abs(out - want).max())
            report.update(tflite_max_abs_diff=diff, tflite_tolerance=tol, float32_rel_error=f32_err)
            if check and not diff <= tol:  # NaN fails too
                raise ExportMismatchError(f"{path}: the .tflite's LiteRT output differs from the supernet's by "
                                          f"{diff:.3g} (tolerance {tol:.3g}); nothing was written")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == "torch":
        meta = {**space_meta(net.space), "config": report["config"], "index": report["index"],
                "input_shape": list(shape)}
        torch.save({"state_dict": module.state_dict(), "meta": json.dumps(meta)}, path)
    elif fmt == "onnx":
        with warnings.catch_warnings():  # the TorchScript exporter warns that it is legacy
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, (x,), path, dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["logits"])
        report["onnx_max_abs_diff"] = _check_onnx(path, x, ref)
        if check and report["onnx_max_abs_diff"] is not None and report["onnx_max_abs_diff"] >= 1e-4:
            raise ExportMismatchError(f"{path}: ONNX Runtime output differs by {report['onnx_max_abs_diff']:.3g}")
    elif model is not None:
        with open(path, "wb") as fh:
            fh.write(model)
    else:
        convert(module, (x,)).export(path)
    return report


def _check_onnx(path: str, x, ref) -> float | None:
    """Max abs difference between ONNX Runtime's output and the supernet's (None without ORT)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return float(np.abs(out - ref.numpy()).max())


def load_exported(path: str | os.PathLike):
    """A `--format torch` export back as the space's module (weights_only load); (module, meta)."""
    payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise UsageError(f"{os.fspath(path)}: not a latbench subnet export")
    meta = json.loads(payload["meta"])
    space = space_from_meta(meta)
    module = space.build(meta["index"])
    module.load_state_dict(payload["state_dict"])
    return module.eval(), meta


def read_config(path: str | os.PathLike, space) -> np.ndarray:
    """A config file: the space's published form, an index list, or a search result holding one
    (`{"config": ...}` / `{"index": [...]}` / `{"results": [{...}]}`, the first is taken)."""
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except OSError as e:
        raise UsageError(f"{os.fspath(path)}: cannot read the config ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{os.fspath(path)}: not JSON (line {e.lineno}: {e.msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("results"), list) and obj["results"]:
        obj = obj["results"][0]
    if isinstance(obj, dict) and "index" in obj:
        return space.index(np.asarray(obj["index"], dtype=np.int64))
    if isinstance(obj, dict) and "config" in obj:
        obj = obj["config"]
    return space.index(obj)


__all__ = ["export_subnet", "load_exported", "read_config", "tflite_available", "litert_torch_available",
           "subnet_tflite", "run_tflite", "FORMATS", "CONVERTERS", "ExportMismatchError"]
