"""Op lists as CSV, JSON Lines, one JSON document or bare keys, and `read_any_ops` that detects which.

Every record carries key, kind, n, c, h, w, attrs (the non-default OpSpec fields beyond the
shape, i.e. `op.to_dict()` without kind and shape), flops, params, bytes. Readers rebuild the
OpSpec from kind, shape and attrs, and check it against the key when one is given: the key is
the join to measured tables, so a file whose key disagrees with its fields is an error.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import IO, Any, Iterable, Iterator, Union

from .. import ops as O
from ..errors import FormatError, LatbenchError
from ..ops import OpSpec

PathOrFile = Union[str, "os.PathLike[str]", IO[str]]
COLUMNS = ("key", "kind", "n", "c", "h", "w", "attrs", "flops", "params", "bytes")
_SHAPE = ("kind", "n", "c", "h", "w")
_DERIVED = ("key", "flops", "params", "bytes")
# Once-for-All LatencyTable key prefixes (parsed by latbench.formats.ofa.parse_ofa_key)
OFA_PREFIXES = tuple(f"{r}-input:" for r in O.OFA_ROLES) + ("expanded_conv-input:",)


# ---------------------------------------------------------------------- records
def op_record(op: OpSpec) -> dict[str, Any]:
    """The plain-data record of an op, as written to jsonl / json (csv holds attrs as JSON text)."""
    d = op.to_dict()
    attrs = {k: v for k, v in d.items() if k not in _SHAPE}
    flops, params, nbytes = op_costs(op)
    return {"key": op.key, "kind": op.kind, "n": op.n, "c": op.c, "h": op.h, "w": op.w,
            "attrs": attrs, "flops": flops, "params": params, "bytes": nbytes}


def op_costs(op: OpSpec) -> tuple[int, int, int]:
    """(op.flops, op.params, op.bytes), expanding a block once instead of once per figure."""
    if op.kind not in O.BLOCK_KINDS:
        return op.flops, op.params, op.bytes
    parts = O.expand(op)
    params = sum(o.params for o in parts)
    n, c, h, w = op.in_shape
    on, oc, oh, ow = op.out_shape
    return sum(o.flops for o in parts), params, O.BYTES_PER_ELEMENT * (n * c * h * w + params + on * oc * oh * ow)


def record_to_op(rec: dict[str, Any], where: str) -> OpSpec:
    """Rebuild an OpSpec from a record (attrs nested or flat) and check its key; errors name `where`."""
    if not isinstance(rec, dict):
        raise FormatError(f"{where}: expected an object with kind, n, c, h, w, got {type(rec).__name__}")
    missing = [k for k in _SHAPE if rec.get(k) in (None, "")]
    if missing:
        raise FormatError(f"{where}: missing field(s) {', '.join(missing)}")
    attrs = rec.get("attrs") or {}
    if isinstance(attrs, str):
        try:
            attrs = json.loads(attrs)
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: attrs is not valid JSON ({e.msg}): {attrs!r}") from None
    if not isinstance(attrs, dict):
        raise FormatError(f"{where}: attrs must be a JSON object, got {attrs!r}")
    flat = {k: v for k, v in rec.items() if k not in _DERIVED + ("attrs",) + _SHAPE}
    fields = {k: rec[k] for k in _SHAPE}
    fields.update(flat)
    fields.update(attrs)
    try:
        op = OpSpec.from_dict(fields)
    except (LatbenchError, ValueError, TypeError) as e:
        raise FormatError(f"{where}: {e}") from None
    key = rec.get("key")
    if key not in (None, "") and key != op.key:
        raise FormatError(f"{where}: key {key!r} does not match the op's fields, which give {op.key!r}")
    return op


# ---------------------------------------------------------------------- writers
def write_csv(ops: Iterable[OpSpec], path_or_file: PathOrFile) -> int:
    """One CSV row per op under a header of COLUMNS; returns the row count."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    for op in ops:
        rec = op_record(op)
        rec["attrs"] = json.dumps(rec["attrs"], separators=(",", ":"))
        writer.writerow([rec[c] for c in COLUMNS])
        count += 1
    _write(buf.getvalue(), path_or_file)
    return count


def write_jsonl(ops: Iterable[OpSpec], path_or_file: PathOrFile) -> int:
    """One JSON object per line per op; returns the line count."""
    lines = [json.dumps(op_record(op), separators=(",", ":")) for op in ops]
    _write("".join(line + "\n" for line in lines), path_or_file)
    return len(lines)


def write_json(ops: Iterable[OpSpec], path_or_file: PathOrFile) -> int:
    """One JSON document: a list of op records; returns the op count."""
    recs = [op_record(op) for op in ops]
    _write(json.dumps(recs, indent=1) + "\n", path_or_file)
    return len(recs)


def write_keys(ops: Iterable[OpSpec], path_or_file: PathOrFile) -> int:
    """One op key a line (for the OFA spaces' blocks: Once-for-All LatencyTable keys)."""
    keys = [op.key for op in ops]
    _write("".join(k + "\n" for k in keys), path_or_file)
    return len(keys)


def _write(text: str, path_or_file: PathOrFile) -> None:
    if isinstance(path_or_file, (str, os.PathLike)):
        with open(path_or_file, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    else:
        path_or_file.write(text)


# ---------------------------------------------------------------------- readers
def _read_text(path: PathOrFile) -> tuple[str, str]:
    if isinstance(path, (str, os.PathLike)):
        name = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise FormatError(f"{name}: cannot read: {e.strerror or e}") from None
        return _decode(data, name), name
    return path.read(), getattr(path, "name", "<stream>")


def _decode(data: bytes, name: str) -> str:
    """UTF-8 text (a BOM dropped, line ends kept); else one line naming the line and byte offset."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FormatError(f"{name}:{line}: not UTF-8 text (byte {data[e.start:e.start + 1]!r} at offset "
                          f"{e.start}: {e.reason}); an op list is UTF-8") from None


def read_csv(path: PathOrFile) -> list[OpSpec]:
    """Ops of a CSV op list (header with at least kind, n, c, h, w)."""
    text, name = _read_text(path)
    return _csv_ops(text, name)


def _csv_ops(text: str, name: str) -> list[OpSpec]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [c for c in _SHAPE if c not in header]
    if missing:
        raise FormatError(f"{name}:1: CSV header lacks column(s) {', '.join(missing)} (has: {', '.join(header)})")
    out = []
    for row in reader:
        where = f"{name}:{reader.line_num}"
        if None in row:
            raise FormatError(f"{where}: more fields than the header's {len(header)}")
        if not any(row.values()):
            continue
        rec: dict[str, Any] = {}
        for k, v in row.items():
            if k in ("n", "c", "h", "w"):
                try:
                    v = int(v)
                except (TypeError, ValueError):
                    raise FormatError(f"{where}: field {k} must be an integer, got {v!r}") from None
            rec[k] = v
        out.append(record_to_op(rec, where))
    return out


def read_jsonl(path: PathOrFile) -> list[OpSpec]:
    """Ops of a JSON Lines op list (one record per line; blank lines skipped)."""
    text, name = _read_text(path)
    return _jsonl_ops(text, name)


def _jsonl_ops(text: str, name: str) -> list[OpSpec]:
    out = []
    for i, line in enumerate(io.StringIO(text), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(f"{name}:{i}: not valid JSON ({e.msg} at column {e.colno})") from None
        out.append(record_to_op(rec, f"{name}:{i}"))
    return out


def read_json(path: PathOrFile) -> list[OpSpec]:
    """Ops of one JSON document holding a list of records (`latbench enumerate --json`)."""
    text, name = _read_text(path)
    return _json_ops(text, name)


def _json_ops(text: str, name: str) -> list[OpSpec]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise FormatError(f"{name}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(doc, list):
        raise FormatError(f"{name}:1: expected a JSON list of op records")
    return [record_to_op(rec, f"{name}: item {i}") for i, rec in enumerate(doc)]


# ---------------------------------------------------------------------- keys
_KEY_PART = re.compile(r"-(?=[a-z_]+:)")
# key field -> (OpSpec field, type); "type" depends on the kind and is handled apart
_KEY_FIELDS: dict[str, tuple[str, type]] = {
    "out": ("out", int), "k": ("kernel", int), "s": ("stride", int), "p": ("padding", int),
    "d": ("dilation", int), "g": ("groups", int), "bias": ("bias", bool), "bn": ("bn", bool),
    "act": ("act", str), "global": ("global_pool", bool), "ceil": ("ceil_mode", bool),
    "countpad": ("count_pad", bool), "bcast": ("broadcast", bool), "axis": ("axis", int),
    "mid": ("mid", int), "expconv": ("expand_conv", bool), "se": ("se", int),
    "seact": ("se_act", str), "sepos": ("se_pos", str), "res": ("residual", bool),
    "proj": ("proj", bool),
}
_TYPE_FIELD = {"pool": "pool", "eltwise": "eltwise", "activation": "act"}


def is_key(line: str) -> bool:
    """True when a line looks like an op key (one token holding `-input:`)."""
    s = line.strip()
    return bool(s) and not any(ch.isspace() for ch in s) and "-input:" in s


def parse_key(key: str, where: str = "<key>") -> OpSpec:
    """The OpSpec of an op key: latbench's own keys, or Once-for-All LatencyTable keys."""
    key = key.strip()
    if key.startswith(OFA_PREFIXES):
        return _parse_ofa(key, where)
    if key.startswith("node-"):
        from ..nodes import parse_node

        try:
            return O.node(parse_node(key, where))
        except LatbenchError as e:
            raise FormatError(str(e)) from None
    parts = _KEY_PART.split(key)
    kind = parts[0]
    if kind not in O.KINDS or len(parts) < 2 or not parts[1].startswith("input:"):
        raise FormatError(f"{where}: not an op key (expected KIND-input:NxCxHxW-..., KIND one of "
                          f"{', '.join(O.KINDS)}, or a Once-for-All key): {key!r}")
    try:
        dims = [int(x) for x in parts[1][len("input:"):].split("x")]
        if kind == "linear" and len(dims) == 2:
            dims += [1, 1]
        if len(dims) != 4:
            raise ValueError
        fields: dict[str, Any] = dict(zip(_SHAPE, [kind] + dims))
        for part in parts[2:]:
            name, _, val = part.partition(":")
            if name == "type" and kind in _TYPE_FIELD:
                fields[_TYPE_FIELD[kind]] = val
                continue
            if name not in _KEY_FIELDS:
                raise FormatError(f"{where}: unknown field {name!r} in key {key!r}")
            field, typ = _KEY_FIELDS[name]
            fields[field] = bool(int(val)) if typ is bool else typ(val)
    except ValueError:
        raise FormatError(f"{where}: malformed op key {key!r}") from None
    if kind in O.BLOCK_KINDS:
        fields["padding"] = (fields.get("kernel", 1) - 1) // 2
        if kind != "mbconv":
            fields["residual"] = True
    try:
        op = OpSpec(**fields)
    except LatbenchError as e:
        raise FormatError(f"{where}: {e}") from None
    if op.key != key:
        raise FormatError(f"{where}: key {key!r} is not canonical (the op it describes has key {op.key!r})")
    return op


def _parse_ofa(key: str, where: str) -> OpSpec:
    try:
        from .ofa import parse_ofa_key
    except ImportError:
        raise FormatError(f"{where}: Once-for-All keys need latbench.formats.ofa, which is not "
                          f"available in this install: {key!r}") from None
    try:
        op = parse_ofa_key(key)
    except LatbenchError as e:
        raise FormatError(f"{where}: {e}") from None
    if not isinstance(op, OpSpec):
        raise FormatError(f"{where}: could not parse Once-for-All key {key!r}")
    return op


def read_keys(path: PathOrFile) -> list[OpSpec]:
    """Ops of a file holding one key a line (blank lines and # comments skipped)."""
    text, name = _read_text(path)
    return [parse_key(line, where) for line, where in _content_lines(text, name)]


def _content_lines(text: str, name: str) -> Iterator[tuple[str, str]]:
    for i, raw in enumerate(io.StringIO(text), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield line, f"{name}:{i}"


# ---------------------------------------------------------------------- detection
def detect_format(text: str) -> str:
    """json | jsonl | csv | lines (keys and/or PaddleSlim lines), from the first content line."""
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.startswith("["):
            return "json"
        if s.startswith("{"):
            return "jsonl"
        if "," in s and "kind" in [c.strip() for c in s.split(",")]:
            return "csv"
        return "lines"
    return "lines"


def read_any_ops(path: PathOrFile) -> list[OpSpec]:
    """Ops of a file in any format latbench writes, detected from its content: a JSON list,
    JSON Lines, CSV with a header, or lines that are each an op key (latbench or Once-for-All)
    or a PaddleSlim op line."""
    from .paddleslim import line_to_op

    text, name = _read_text(path)
    fmt = detect_format(text)
    if fmt == "json":
        return _json_ops(text, name)
    if fmt == "jsonl":
        return _jsonl_ops(text, name)
    if fmt == "csv":
        return _csv_ops(text, name)
    return [parse_key(line, where) if is_key(line) else line_to_op(line, where)
            for line, where in _content_lines(text, name)]


__all__ = ["COLUMNS", "op_record", "record_to_op", "write_csv", "read_csv", "write_jsonl",
           "read_jsonl", "write_json", "read_json", "write_keys", "read_keys", "parse_key",
           "is_key", "detect_format", "read_any_ops"]
