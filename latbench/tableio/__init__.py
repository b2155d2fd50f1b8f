"""Moving latency tables between latbench's SQLite store and other formats, merging and combining tables.

One module per format: csv_table (every column, lossless, with a .meta.json sidecar), jsonl_table
(every column, one self-contained file), paddleslim_table (LightNAS text, with a sidecar for what
the text cannot hold), ofa_table (Once-for-All LatencyTable YAML); merge puts tables of one device
profile together, combine makes a new table of several devices that names them.
"""
from .combine import combine, combined_profile
from .common import Transfer, copy_missing_meta, import_profile, take_meta, use_profile
from .csv_table import csv_meta_path, export_csv, import_csv
from .jsonl_table import export_jsonl, import_jsonl
from .merge import merge
from .ofa_table import export_ofa_yaml, import_ofa_yaml
from .paddleslim_table import export_paddleslim, import_paddleslim, paddleslim_meta_path

__all__ = ["Transfer", "import_profile", "use_profile", "copy_missing_meta", "take_meta", "csv_meta_path",
           "export_csv", "import_csv", "export_jsonl", "import_jsonl", "export_paddleslim",
           "import_paddleslim", "paddleslim_meta_path", "export_ofa_yaml", "import_ofa_yaml", "merge",
           "combine", "combined_profile"]
