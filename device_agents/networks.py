"""Whole subnets as the models agents run end to end: the torch subnet (`space.build`) exported to
ONNX, or the subnet's blocks as one .tflite (tflite_build's chain builder, canonical weights)."""
from __future__ import annotations

import io
import warnings

from latbench.errors import require


def export_onnx(space, config, module=None) -> bytes:
    """The torch subnet (`module`, else `space.build(config)`) exported to ONNX (opset 17,
    TorchScript exporter), as bytes."""
    torch = require("torch", "torch")
    require("onnx", "ort")
    module = (module if module is not None else space.build(config)).eval()
    x = torch.zeros(space.input_shape(config))
    buf = io.BytesIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tracing runs the convs once: one thread is faster on a busy host
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice, once per subnet
            torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y"], do_constant_folding=True)
    finally:
        torch.set_num_threads(threads)
    return buf.getvalue()


def tflite_network(space, config, seed: int = 0) -> bytes:
    """The subnet as one .tflite model (the chain builder, canonical weights of `seed`)."""
    from .tflite_build import build_tflite_chain
    from .weights import op_weights

    blocks = space.blocks(config)
    return build_tflite_chain(blocks, [op_weights(b, seed + i) for i, b in enumerate(blocks)])


__all__ = ["export_onnx", "tflite_network"]
