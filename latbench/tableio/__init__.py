"""Moving latency tables between latbench's SQLite store and other formats, and merging tables.

One module per format: csv_table (every column, lossless), paddleslim_table (LightNAS text),
ofa_table (Once-for-All LatencyTable YAML); merge combines tables of one device profile.
"""
from .common import Transfer, copy_missing_meta, import_profile, use_profile
from .csv_table import csv_meta_path, export_csv, import_csv
from .merge import merge
from .ofa_table import export_ofa_yaml, import_ofa_yaml
from .paddleslim_table import export_paddleslim, import_paddleslim

__all__ = ["Transfer", "import_profile", "use_profile", "copy_missing_meta", "csv_meta_path",
           "export_csv", "import_csv", "export_paddleslim", "import_paddleslim", "export_ofa_yaml",
           "import_ofa_yaml", "merge"]
