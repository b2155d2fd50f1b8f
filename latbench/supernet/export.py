"""Export a subnet: the space's own `build(config)` module with the supernet's weights, saved as
a torch weights file, an ONNX model (TorchScript exporter, opset 17) or a .tflite (litert-torch).

The export is checked: the standalone module (and, for ONNX, ONNX Runtime when installed) must
reproduce the supernet's output for that config; the report carries the max abs differences.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

from ..errors import LatbenchError, MissingExtraError, UsageError, require
from .checkpoint import space_from_meta, space_meta

torch = require("torch", "torch")

FORMATS = ("torch", "onnx", "tflite")
TOLERANCE = 1e-5


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


def tflite_available() -> bool:
    return _tflite_converter() is not None


def export_subnet(net, config: Any, path: str | os.PathLike, fmt: str = "onnx", *, calib_x=None,
                  opset: int = 17, check: bool = True, seed: int = 0) -> dict[str, Any]:
    """Write subnet `config` of SuperNet `net` to `path` in `fmt`; returns a report (config,
    input shape, max abs differences). With `calib_x`, BN statistics are re-estimated first."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = os.fspath(path)
    convert = _tflite_converter() if fmt == "tflite" else None
    if fmt == "tflite" and convert is None:
        raise MissingExtraError("tflite export needs litert-torch, which is not installed "
                                "(pip install litert-torch); nothing was written. "
                                "Export --format onnx and convert it with your toolchain instead.")
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


__all__ = ["export_subnet", "load_exported", "read_config", "tflite_available", "FORMATS", "ExportMismatchError"]
