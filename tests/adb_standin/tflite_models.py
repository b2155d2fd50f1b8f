"""Tiny real .tflite models for stand-in tests (single ADD, single CONV_2D), built without TensorFlow.

Uses ai-edge-litert's generated schema (object API) and flatbuffers, as FIELD-NOTES describes:
buffer 0 is the empty sentinel, opcodes set builtinCode and deprecatedBuiltinCode, activations NHWC,
CONV_2D weights OHWI, constant buffers 16-byte aligned.
"""
from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np


def _schema():
    """The generated TFLite schema module (ai-edge-litert, else tflite-runtime)."""
    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError:  # pragma: no cover - older runtime name
        from tflite_runtime import schema_py_generated as s  # type: ignore[no-redef]
    return s


def _tensor(s, name: str, shape: tuple[int, ...], buffer: int):
    """A float32 TensorT."""
    t = s.TensorT()
    t.name, t.shape, t.type, t.buffer = name, list(shape), s.TensorType.FLOAT32, buffer
    return t


def _opcode(s, code: int):
    """An OperatorCodeT for a builtin op."""
    oc = s.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
    return oc


def _vector(builder: flatbuffers.Builder, offsets: list[int]) -> int:
    """A vector of table offsets."""
    builder.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        builder.PrependUOffsetTRelative(off)
    return builder.EndVector()


def _pack(s, tensors: list, op, opcode, buffers: list[bytes | None], inputs: list[int], outputs: list[int]) -> bytes:
    """Serialize a one-operator model; constant buffers are written 16-byte aligned."""
    builder = flatbuffers.Builder(1024)
    data_offsets = []
    for raw in buffers:  # BufferT.Pack does not align, so the data vectors are written by hand
        if raw is None:
            data_offsets.append(None)
            continue
        builder.StartVector(1, len(raw), 16)
        builder.head -= len(raw)
        builder.Bytes[builder.head:builder.head + len(raw)] = raw
        data_offsets.append(builder.EndVector())
    buffer_offsets = []
    for off in data_offsets:
        s.BufferStart(builder)
        if off is not None:
            s.BufferAddData(builder, off)
        buffer_offsets.append(s.BufferEnd(builder))
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = tensors, inputs, outputs, [op], "main"
    subgraphs = _vector(builder, [sg.Pack(builder)])
    codes = _vector(builder, [opcode.Pack(builder)])
    buffers_vec = _vector(builder, buffer_offsets)
    desc = builder.CreateString("latbench stand-in")
    s.ModelStart(builder)
    s.ModelAddVersion(builder, 3)
    s.ModelAddOperatorCodes(builder, codes)
    s.ModelAddSubgraphs(builder, subgraphs)
    s.ModelAddDescription(builder, desc)
    s.ModelAddBuffers(builder, buffers_vec)
    builder.Finish(s.ModelEnd(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def add_model(shape: tuple[int, ...] = (1, 8, 8, 4)) -> bytes:
    """y = a + b for two float32 NHWC inputs of the given shape."""
    s = _schema()
    tensors = [_tensor(s, "a", shape, 1), _tensor(s, "b", shape, 2), _tensor(s, "y", shape, 3)]
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType = s.BuiltinOptions.AddOptions
    op.builtinOptions = s.AddOptionsT()
    return _pack(s, tensors, op, _opcode(s, s.BuiltinOperator.ADD), [None, None, None, None], [0, 1], [2])


def conv_model(hw: int = 16, cin: int = 8, cout: int = 16, kernel: int = 3, seed: int = 0) -> bytes:
    """A single 'SAME' stride-1 CONV_2D with bias and fused RELU on a (1, hw, hw, cin) input."""
    s = _schema()
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, kernel, kernel, cin)).astype(np.float32) * 0.1
    b = rng.standard_normal(cout).astype(np.float32) * 0.1
    tensors = [_tensor(s, "x", (1, hw, hw, cin), 1), _tensor(s, "w", w.shape, 2), _tensor(s, "b", b.shape, 3),
               _tensor(s, "y", (1, hw, hw, cout), 4)]
    opts = s.Conv2DOptionsT()
    opts.padding, opts.strideW, opts.strideH = s.Padding.SAME, 1, 1
    opts.dilationWFactor, opts.dilationHFactor = 1, 1
    opts.fusedActivationFunction = s.ActivationFunctionType.RELU
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.Conv2DOptions, opts
    return _pack(s, tensors, op, _opcode(s, s.BuiltinOperator.CONV_2D),
                 [None, None, w.tobytes(), b.tobytes(), None], [0], [3])


def write_model(path: str | Path, kind: str = "add", **kw) -> Path:
    """Write add_model()/conv_model() to path and return it."""
    path = Path(path)
    path.write_bytes({"add": add_model, "conv": conv_model}[kind](**kw))
    return path
