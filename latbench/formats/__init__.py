"""Readers and writers of op lists and latency tables in other tools' formats (and latbench's own).

PaddleSlim LightNAS text (`paddleslim`), CSV / JSON Lines / JSON / bare keys (`oplist`).
Once-for-All LatencyTable YAML lives in `latbench.formats.ofa`, imported only where it is used.
"""
from __future__ import annotations

from .oplist import (
    COLUMNS, detect_format, op_record, parse_key, read_any_ops, read_csv, read_json, read_jsonl,
    read_keys, record_to_op, write_csv, write_json, write_jsonl, write_keys,
)
from .paddleslim import line_to_op, op_to_line, read_ops, read_table, write_ops, write_table

__all__ = [
    "op_to_line", "line_to_op", "write_ops", "read_ops", "write_table", "read_table",
    "COLUMNS", "op_record", "record_to_op", "write_csv", "read_csv", "write_jsonl", "read_jsonl",
    "write_json", "read_json", "write_keys", "read_keys", "parse_key", "detect_format",
    "read_any_ops",
]
