"""`latbench spaces` and `latbench enumerate`: the registered spaces, and every unique op of one."""
from __future__ import annotations

import enum
import json
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import LatbenchError, UsageError
from .common import _stderr, _stdout, format_resolutions, format_size


class Granularity(str, enum.Enum):
    op = "op"
    block = "block"


class OutFormat(str, enum.Enum):
    paddleslim = "paddleslim"
    csv = "csv"
    jsonl = "jsonl"
    keys = "keys"

def _write_ops(ops, fmt: str, out) -> None:
    """Write `ops` to the open text stream `out` in `fmt` (paddleslim|csv|jsonl|keys|json)."""
    from ..formats import oplist, paddleslim

    writers: dict[str, Callable] = {
        "paddleslim": paddleslim.write_ops, "csv": oplist.write_csv, "jsonl": oplist.write_jsonl,
        "keys": oplist.write_keys, "json": oplist.write_json,
    }
    writers[fmt](ops, out)


def _emit(ops, fmt: str, output: Optional[Path]) -> None:
    """Render all ops first (so an op the format cannot express leaves no half-written file),
    then write them to `output` or stdout."""
    import io

    buf = io.StringIO()
    _write_ops(ops, fmt, buf)
    if output is None:
        try:
            sys.stdout.write(buf.getvalue())
            sys.stdout.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise LatbenchError(f"cannot write to stdout: {e.strerror or e}") from None
        return
    try:
        output.write_text(buf.getvalue(), encoding="utf-8")
    except OSError as e:
        raise LatbenchError(f"{output}: cannot write: {e.strerror or e}") from None


def _summary_line(name: str, granularity: str, resolutions, counts: dict[str, int], seconds: float) -> str:
    per_kind = ", ".join(f"{k} {v}" for k, v in counts.items()) or "no ops"
    total = sum(counts.values())
    return (f"{name} | granularity {granularity} | resolutions {format_resolutions(resolutions)} | "
            f"{per_kind} | total {total} | {seconds:.2f} s")


# ---------------------------------------------------------------------- spaces
def spaces_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (a list of spaces)."),
) -> None:
    """List the registered search spaces: positions, number of distinct subnets, resolutions."""
    from ..spaces import get_space, list_spaces

    rows = [get_space(name).describe() for name in list_spaces()]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    table = Table(title="registered search spaces", title_justify="left")
    for col, just in (("name", "left"), ("positions", "right"), ("subnets", "right"),
                      ("resolutions", "left")):
        table.add_column(col, justify=just, no_wrap=True)
    for d in rows:
        table.add_row(d["name"], str(d["positions"]), format_size(int(d["size"])),
                      format_resolutions(d["resolutions"]))
    con = _stdout()
    con.print(table)
    for d in rows:
        if d.get("description"):
            con.print(f"[bold]{escape(d['name'])}[/bold]: {escape(d['description'])}")
    _stderr().print("a YAML file works wherever a space name does (schema: docs/spaces.md)")


# ---------------------------------------------------------------------- enumerate
def enumerate_cmd(
    space: str = typer.Argument(..., metavar="SPACE_OR_YAML",
                                help="A registered space (see `latbench spaces`) or a YAML space file."),
    resolution: Optional[List[int]] = typer.Option(
        None, "--resolution", "-r", help="Input resolution; repeat for several (default: all of the space's)."),
    granularity: Granularity = typer.Option(
        Granularity.op, "--granularity", "-g", help="op: single operators; block: fused blocks."),
    fmt: Optional[OutFormat] = typer.Option(
        None, "--format", "-f",
        help="Output format (default: paddleslim at op granularity, keys at block granularity)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout."),
    as_json: bool = typer.Option(False, "--json", help="One JSON document: a list of op records."),
) -> None:
    """Write every unique op of a search space, for a profiler to measure once."""
    from ..enumerate import enumerate_ops, summary
    from ..spaces import get_space

    g = granularity.value
    if as_json and fmt is not None:
        raise UsageError("--json and --format exclude each other: pick one")
    out_fmt = "json" if as_json else (fmt.value if fmt else ("paddleslim" if g == "op" else "keys"))
    if out_fmt == "paddleslim" and g == "block":
        raise UsageError("blocks have no PaddleSlim line: use --granularity op, or --format csv|jsonl|keys")
    t0 = time.perf_counter()
    sp = get_space(space)
    res = sp.check_resolutions(resolution)
    ops = enumerate_ops(sp, res, g)
    _emit(ops, out_fmt, output)
    seconds = time.perf_counter() - t0
    line = _summary_line(sp.name or space, g, res, summary(ops), seconds)
    _stderr().print(line + (f" | wrote {output}" if output else ""), markup=False)
