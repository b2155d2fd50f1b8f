"""Whole subnets as the models agents run end to end: the torch subnet (`space.build`) exported to
ONNX, or the subnet's blocks as one .tflite (tflite_build's chain builder, canonical weights)."""
from __future__ import annotations




def export_onnx(space, config, module=None) -> bytes:
    """The torch subnet (`module`, else `space.build(config)`) exported to ONNX by latbench's one
    recipe (latbench.modelops.export_module: opset 17, TorchScript exporter), input "x", output "y"."""
    from latbench.modelops import export_module

    module = module if module is not None else space.build(config)
    return export_module(module, space.input_shape(config), input_names=["x"], output_names=["y"])


def tflite_network(space, config, seed: int = 0) -> bytes:
    """The subnet as one .tflite model (the chain builder, canonical weights of `seed`)."""
    from .tflite_build import build_tflite_chain
    from .weights import op_weights

    blocks = space.blocks(config)
    return build_tflite_chain(blocks, [op_weights(b, seed + i) for i, b in enumerate(blocks)])


__all__ = ["export_onnx", "tflite_network"]
