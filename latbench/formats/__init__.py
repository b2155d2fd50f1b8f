"""Readers and writers of op lists and latency tables in other tools' formats (and latbench's own).

Op lists: PaddleSlim LightNAS text (`paddleslim`), CSV / JSON Lines / JSON / bare keys (`oplist`);
Once-for-All keys and LatencyTable YAML (`ofa`, imported only where it is used: it needs yaml).
Latency tables, exported from and imported into a LatencyTable through the store's public API:
`csv_table` and `jsonl_table` (every column, lossless), `paddleslim_table` (LightNAS text and a
sidecar), `ofa_table` (OFA YAML, one file per resolution); `table_common` holds what they share.
Each returns a latbench.merge.Transfer.
"""
from __future__ import annotations

from .oplist import (
    COLUMNS, detect_format, op_record, parse_key, read_any_ops, read_csv, read_json, read_jsonl,
    read_keys, record_to_op, write_csv, write_json, write_jsonl, write_keys,
)
from .paddleslim import line_to_op, op_to_line, read_ops, read_table, write_ops, write_table
from .csv_table import csv_meta_path, export_csv, import_csv
from .jsonl_table import export_jsonl, import_jsonl
from .ofa_table import export_ofa_yaml, import_ofa_yaml
from .paddleslim_table import export_paddleslim, import_paddleslim, paddleslim_meta_path
from .table_common import import_profile, use_profile

__all__ = [
    "op_to_line", "line_to_op", "write_ops", "read_ops", "write_table", "read_table",
    "COLUMNS", "op_record", "record_to_op", "write_csv", "read_csv", "write_jsonl", "read_jsonl",
    "write_json", "read_json", "write_keys", "read_keys", "parse_key", "detect_format",
    "read_any_ops", "csv_meta_path", "export_csv", "import_csv", "export_jsonl", "import_jsonl",
    "export_ofa_yaml", "import_ofa_yaml", "export_paddleslim", "import_paddleslim", "paddleslim_meta_path",
    "import_profile", "use_profile",
]
