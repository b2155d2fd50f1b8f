"""PaddleSlim LightNAS op lists and latency tables: one op a line, whitespace separated.

Op lines (a table line is the same with the latency in ms last):

    conv flag_bias flag_relu n_in c_in h_in w_in c_out groups kernel padding stride dilation
    activation active_type n c h w
    batch_norm active_type n c h w              (active_type None when there is none)
    eltwise eltwise_type n c h w [broadcast]    (1 mul, 2 add, 3 max)
    pooling flag_global_pooling n c h w kernel padding stride ceil_mode pool_type
                                                (1 max, 2 avg incl. padding, 3 avg excl. padding)
    softmax axis n c h w
    shuffle_channel group n c h w               (Paddle's shuffle_channel op, its `group` attribute)

PaddleSlim pads a flat (n, c) tensor to `n c 1 1` and writes the softmax of flat logits with axis
-1 (`softmax -1 1 1000 1 1` in LightNAS's own op list); latbench's softmax over the channels of an
(n, c, 1, 1) tensor is that op, written and read so (axis 1 and -1 both read as it).

latbench extensions, written only when needed and still accepted by PaddleSlim's dict loader
(`tuple(line.split()[:-1]) -> latency`): `linear flag_bias n_in c_in c_out` (no LightNAS op: the
lightnas space writes its classifier as PaddleSlim does, a 1x1 conv, an eltwise add and a
softmax), and a trailing broadcast flag on eltwise (`eltwise 1 1 120 28 28 1`: the second operand
is (n, c, 1, 1)). Fused activations other than relu, conv + batch norm, and block kinds have no
line. A latency must be a finite number >= 0 (ms).
"""
from __future__ import annotations

import io
import math
import os
from typing import IO, Iterable, Iterator, Union

from .. import ops as O
from ..errors import FormatError, OpError
from ..ops import OpSpec

PathOrFile = Union[str, "os.PathLike[str]", IO[str]]

# latbench activation name <-> Paddle op name
ACT_TO_PADDLE = {
    "relu": "relu", "relu6": "relu6", "sigmoid": "sigmoid", "tanh": "tanh", "hswish": "hard_swish",
    "hsigmoid": "hard_sigmoid", "swish": "swish", "gelu": "gelu",
}
# Paddle names, plus latbench's own and common aliases, read leniently.
PADDLE_TO_ACT = {**{v: k for k, v in ACT_TO_PADDLE.items()}, **{k: k for k in ACT_TO_PADDLE},
                 "silu": "swish", "hardswish": "hswish", "hardsigmoid": "hsigmoid"}
ELTWISE_CODES = {"mul": 1, "add": 2, "max": 3}
CODE_TO_ELTWISE = {v: k for k, v in ELTWISE_CODES.items()}

# field names after the op type, per op type (the fixed part; eltwise may add one flag)
FIELDS: dict[str, tuple[str, ...]] = {
    "conv": ("flag_bias", "flag_relu", "n_in", "c_in", "h_in", "w_in", "c_out", "groups", "kernel",
             "padding", "stride", "dilation"),
    "activation": ("active_type", "n", "c", "h", "w"),
    "batch_norm": ("active_type", "n", "c", "h", "w"),
    "eltwise": ("eltwise_type", "n", "c", "h", "w"),
    "pooling": ("flag_global_pooling", "n", "c", "h", "w", "kernel", "padding", "stride",
                "ceil_mode", "pool_type"),
    "softmax": ("axis", "n", "c", "h", "w"),
    "linear": ("flag_bias", "n_in", "c_in", "c_out"),
    "shuffle_channel": ("group", "n", "c", "h", "w"),
}
_HINT = "use --granularity op, or --format csv|jsonl which hold any op"


class _LineError(ValueError):
    """What is wrong with one line; the caller adds file:line."""


# ---------------------------------------------------------------------- writing
def op_to_line(op: OpSpec, hint: str = _HINT) -> str:
    """The PaddleSlim line of `op` (no latency); FormatError when the format cannot express it,
    ending with `hint` (what the caller can do instead)."""
    k = op.kind
    if k in O.BLOCK_KINDS:
        raise FormatError(f"a {k} block has no PaddleSlim line ({op.key}); {hint}")
    if k == "node":
        raise FormatError(f"a runtime graph node has no PaddleSlim line ({op.key[:80]}...); use --format "
                          f"csv|jsonl, which hold any op")
    if op.role:
        raise FormatError(f"op {op.key} carries the Once-for-All role {op.role!r}, which a PaddleSlim "
                          f"line loses; {hint}")
    shape = f"{op.n} {op.c} {op.h} {op.w}"
    if k == "conv":
        if op.bn or op.act not in ("none", "relu"):
            raise FormatError(f"conv with bn={op.bn} act={op.act} has no PaddleSlim line (only a "
                              f"fused relu can be written) ({op.key}); {hint}")
        return (f"conv {int(op.bias)} {int(op.act == 'relu')} {shape} {op.out} {op.groups} "
                f"{op.kernel} {op.padding} {op.stride} {op.dilation}")
    if k == "activation":
        return f"activation {ACT_TO_PADDLE[op.act]} {shape}"
    if k == "batch_norm":
        act = "None" if op.act == "none" else ACT_TO_PADDLE[op.act]
        return f"batch_norm {act} {shape}"
    if k == "eltwise":
        line = f"eltwise {ELTWISE_CODES[op.eltwise]} {shape}"
        return line + " 1" if op.broadcast else line
    if k == "pool":
        if op.pool == "max" and op.count_pad:
            raise FormatError(f"max pool with count_pad has no PaddleSlim line ({op.key}); {hint}")
        pool_type = 1 if op.pool == "max" else (2 if op.count_pad else 3)
        return (f"pooling {int(op.global_pool)} {shape} {op.kernel} {op.padding} {op.stride} "
                f"{int(op.ceil_mode)} {pool_type}")
    if k == "softmax":
        return f"softmax {-1 if _flat_softmax(op.axis, op.h, op.w) else op.axis} {shape}"
    if k == "shuffle":
        return f"shuffle_channel {op.groups} {shape}"
    if k == "linear":
        if op.act != "none" or op.h != 1 or op.w != 1:
            raise FormatError(f"linear with act={op.act} on a {op.h}x{op.w} input has no line in "
                              f"latbench's PaddleSlim extension ({op.key}); {hint}")
        return f"linear {int(op.bias)} {op.n} {op.c} {op.out}"
    raise FormatError(f"op kind {k!r} has no PaddleSlim line; {hint}")  # pragma: no cover


def _flat_softmax(axis: int, h: int, w: int) -> bool:
    """A softmax over the channels of (n, c, 1, 1): PaddleSlim's softmax of flat (n, c) logits."""
    return h == 1 and w == 1 and axis in (1, -1)


def format_latency(ms: float) -> str:
    """Shortest text that reads back to the same float."""
    return repr(float(ms))


def write_ops(ops: Iterable[OpSpec], path_or_file: PathOrFile) -> int:
    """Write one PaddleSlim line per op; returns the number of lines. Nothing is written if an op
    cannot be expressed."""
    lines = [op_to_line(op) for op in ops]
    _write_lines(lines, path_or_file)
    return len(lines)


def write_table(rows: Iterable[tuple[OpSpec, float]], path_or_file: PathOrFile) -> int:
    """Write a latency table: each op's line with its latency (ms) last; returns the row count."""
    lines = [f"{op_to_line(op)} {format_latency(ms)}" for op, ms in rows]
    _write_lines(lines, path_or_file)
    return len(lines)


def _write_lines(lines: list[str], path_or_file: PathOrFile) -> None:
    text = "".join(line + "\n" for line in lines)
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        path_or_file.write(text)


# ---------------------------------------------------------------------- reading
def line_to_op(line: str, where: str = "<line>") -> OpSpec:
    """Parse one PaddleSlim op line (no latency); FormatError names `where` and what is wrong."""
    try:
        return _parse(line.split())
    except _LineError as e:
        raise FormatError(f"{where}: {e}: {line.strip()!r}") from None


def read_ops(path: PathOrFile) -> list[OpSpec]:
    """Every op of a PaddleSlim op list (blank lines and # comments skipped)."""
    return [_parse_at(fields, where) for fields, where in _lines(path)]


def read_table(path: PathOrFile) -> list[tuple[OpSpec, float]]:
    """Every (op, latency ms) row of a PaddleSlim latency table; an op on two lines with different
    latencies is refused naming both (identical lines are kept once each)."""
    rows = []
    seen: dict[str, tuple[str, str, float]] = {}  # op key -> (file:line, latency text, latency)
    for fields, where in _lines(path):
        if len(fields) < 2:
            raise FormatError(f"{where}: a table line needs an op and a latency, got {' '.join(fields)!r}")
        try:
            ms = float(fields[-1])
        except ValueError:
            raise FormatError(f"{where}: latency {fields[-1]!r} is not a number "
                              f"(a table line ends with the latency in ms)") from None
        if not (math.isfinite(ms) and ms >= 0):
            raise FormatError(f"{where}: latency {fields[-1]!r} must be a finite number >= 0 (ms)")
        op = _parse_at(fields[:-1], where)
        first = seen.setdefault(op.key, (where, fields[-1], ms))
        if first[2] != ms:
            raise FormatError(f"{where}: op {op.key} has latency {fields[-1]} ms here and {first[1]} ms at "
                              f"{first[0]}; a table holds one latency per op")
        rows.append((op, ms))
    return rows


def _parse_at(fields: list[str], where: str) -> OpSpec:
    try:
        return _parse(fields)
    except _LineError as e:
        raise FormatError(f"{where}: {e}: {' '.join(fields)!r}") from None


def _lines(path: PathOrFile) -> Iterator[tuple[list[str], str]]:
    """(fields, 'file:line') of each non-blank, non-comment line."""
    if isinstance(path, (str, os.PathLike)):
        name = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise FormatError(f"{name}: cannot read: {e.strerror or e}") from None
    else:
        name = getattr(path, "name", "<stream>")
        text = path.read()
    for i, raw in enumerate(io.StringIO(text), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield line.split(), f"{name}:{i}"


def _parse(fields: list[str]) -> OpSpec:
    if not fields:
        raise _LineError("empty line")
    typ, args = fields[0], fields[1:]
    if typ not in FIELDS:
        raise _LineError(f"unknown op type {typ!r} (known: {', '.join(FIELDS)})")
    names = FIELDS[typ]
    allowed = (len(names), len(names) + 1) if typ == "eltwise" else (len(names),)
    if len(args) not in allowed:
        want = " or ".join(str(n + 1) for n in allowed)
        raise _LineError(f"{typ} takes {want} fields ({typ} {' '.join(names)}), got {len(fields)}")
    try:
        return _build(typ, args, names)
    except OpError as e:
        raise _LineError(str(e)) from None


def _int(args: list[str], names: tuple[str, ...], i: int) -> int:
    try:
        return int(args[i])
    except ValueError:
        name = names[i] if i < len(names) else "broadcast"
        raise _LineError(f"field {name} must be an integer, got {args[i]!r}") from None


def _flag(args: list[str], names: tuple[str, ...], i: int) -> bool:
    v = _int(args, names, i)
    if v not in (0, 1):
        name = names[i] if i < len(names) else "broadcast"
        raise _LineError(f"field {name} must be 0 or 1, got {v}")
    return bool(v)


def _act(name: str, allow_none: bool) -> str:
    if allow_none and name.lower() in ("none", "null", "0"):
        return "none"
    act = PADDLE_TO_ACT.get(name.lower())
    if act is None:
        raise _LineError(f"unsupported active_type {name!r} (supported: "
                         f"{', '.join(ACT_TO_PADDLE.values())}{', None' if allow_none else ''})")
    return act


def _build(typ: str, args: list[str], names: tuple[str, ...]) -> OpSpec:
    if typ == "conv":
        bias, relu = _flag(args, names, 0), _flag(args, names, 1)
        n, c, h, w, out, groups, kernel, padding, stride, dilation = (
            _int(args, names, i) for i in range(2, 12))
        return OpSpec("conv", n, c, h, w, out=out, kernel=kernel, stride=stride, padding=padding,
                      dilation=dilation, groups=groups, bias=bias, act="relu" if relu else "none")
    if typ in ("activation", "batch_norm"):
        act = _act(args[0], allow_none=typ == "batch_norm")
        n, c, h, w = (_int(args, names, i) for i in range(1, 5))
        return OpSpec(typ, n, c, h, w, act=act)
    if typ == "eltwise":
        code = _int(args, names, 0)
        if code not in CODE_TO_ELTWISE:
            raise _LineError(f"eltwise_type must be 1 (mul), 2 (add) or 3 (max), got {code}")
        n, c, h, w = (_int(args, names, i) for i in range(1, 5))
        bcast = _flag(args, names, 5) if len(args) == 6 else False
        return OpSpec("eltwise", n, c, h, w, eltwise=CODE_TO_ELTWISE[code], broadcast=bcast)
    if typ == "pooling":
        glob = _flag(args, names, 0)
        n, c, h, w, kernel, padding, stride = (_int(args, names, i) for i in range(1, 8))
        ceil = _flag(args, names, 8)
        pool_type = _int(args, names, 9)
        if pool_type not in (1, 2, 3):
            raise _LineError(f"pool_type must be 1 (max), 2 (avg incl. padding) or 3 (avg excl. "
                             f"padding), got {pool_type}")
        kind, count_pad = ("max", False) if pool_type == 1 else ("avg", pool_type == 2)
        if glob:  # kernel/stride/padding are implied (PaddleSlim files sometimes write kernel 0)
            return O.pool((n, c, h, w), kind, global_pool=True, count_pad=count_pad)
        return OpSpec("pool", n, c, h, w, pool=kind, kernel=kernel, stride=stride, padding=padding,
                      ceil_mode=ceil, count_pad=count_pad)
    if typ == "softmax":
        axis, n, c, h, w = (_int(args, names, i) for i in range(5))
        return OpSpec("softmax", n, c, h, w, axis=1 if _flat_softmax(axis, h, w) else axis)
    if typ == "shuffle_channel":
        group, n, c, h, w = (_int(args, names, i) for i in range(5))
        return O.shuffle((n, c, h, w), group)
    # linear (latbench extension)
    bias = _flag(args, names, 0)
    n, c, out = (_int(args, names, i) for i in range(1, 4))
    return O.linear(n, c, out, bias=bias)


__all__ = ["op_to_line", "line_to_op", "write_ops", "read_ops", "write_table", "read_table",
           "ACT_TO_PADDLE", "ELTWISE_CODES", "FIELDS"]
