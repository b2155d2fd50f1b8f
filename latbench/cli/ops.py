"""`latbench ops --model`: a whole model's op list as a device's runtime runs it (latbench.modelops),
written for `latbench profile --ops` or read by people. `latbench profile --model` profiles it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import UsageError

_MODEL = typer.Option(None, "--model", "-m", help="an ONNX file, or module:callable (a function returning a "
                      "torch module, exported to ONNX in process)")
_SHAPE = typer.Option(None, "--input-shape", help="N,C,H,W: the input shape (a torch module, or an ONNX "
                      "model with symbolic dims)")


def model_op_list(model: str, input_shape: Optional[str], device: str, **flags):
    """The ModelOps of `model` as `device` (with its agent `flags`) runs it (latbench.modelops)."""
    from device_agents import agent_options

    from ..model_price import parse_input_shape
    from ..modelops import model_ops

    return model_ops(model, parse_input_shape(input_shape), device, **agent_options(device, flags))


def ops_command(
    model: Optional[str] = _MODEL,
    device: str = typer.Option(..., "--device", "-d", help="whose runtime's fusions to apply: cpu, cuda, ort, "
                               "tflite (android: with --runner)"),
    input_shape: Optional[str] = _SHAPE,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the unique ops (.jsonl, .csv, .json or "
                                       ".txt keys; by suffix) for `latbench profile --ops`"),
    opt_level: Optional[str] = typer.Option(None, "--opt-level", help="ort: graph optimisation level (default all)"),
    runner: Optional[Path] = typer.Option(None, "--runner", help="android: the runner (its name picks tflite or ort)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """A model's ops as DEVICE's runtime runs them (its fusions applied); unmapped nodes listed by
    type and count (exit 3 when there are any)."""
    from ..formats.oplist import write_csv, write_json, write_jsonl, write_keys

    if model is None:
        raise UsageError("give --model FILE.onnx or module:callable")
    mo = model_op_list(model, input_shape, device, opt_level=opt_level, runner=str(runner) if runner else None)
    if out is not None:
        writers = {".jsonl": write_jsonl, ".csv": write_csv, ".json": write_json, ".txt": write_keys}
        write = writers.get(out.suffix.lower())
        if write is None:
            raise UsageError(f"--out {out}: the suffix picks the format: {', '.join(writers)}")
        write(mo.unique, out)
    if as_json:
        typer.echo(json.dumps({"model": mo.name, "fusion": mo.fusion, "input_shape": mo.input_shape,
                               "ops": [op.key for op in mo.ops], "unique": len(mo.unique), "free": mo.free,
                               "unmapped": [{"op_type": t, "count": n} for t, n in mo.unmapped_counts()],
                               "out": str(out) if out else None}, indent=1))
    elif out is None:
        for op in mo.unique:
            typer.echo(op.key)
    typer.echo(mo.summary() + (f"; wrote {out}" if out else ""), err=True)
    if mo.unmapped:
        raise typer.Exit(3)


__all__ = ["model_op_list", "ops_command"]
