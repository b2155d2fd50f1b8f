"""`latbench table show|export|import|merge`: look into a latency table and move it between formats.

Mounted by latbench/cli.py as `app.add_typer(table_app, name="table")`; library errors are
LatbenchError subclasses, which cli.run turns into one stderr line and an exit code. Data goes to
stdout (the rows, `--json`), summaries to stderr.
"""
from __future__ import annotations

import enum
import json
import os
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from .errors import UsageError

table_app = typer.Typer(
    name="table",
    help="Show a latency table, export it to CSV / PaddleSlim text / Once-for-All YAML, import "
    "those back, merge tables of one device profile.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_SHOW_LIMIT = 50


class TableFormat(str, enum.Enum):
    csv = "csv"
    paddleslim = "paddleslim"
    ofa_yaml = "ofa-yaml"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.4g}"


def _row_view(r: dict[str, Any]) -> dict[str, Any]:
    """The fields `show` prints for one row."""
    from .store import row_to_measurement

    st = row_to_measurement(r).stats
    iqr = r["p75"] - r["p25"] if r["p25"] is not None and r["p75"] is not None else None
    return {
        "key": r["key"], "kind": r["kind"], "status": r["status"], "error": r["error"],
        "estimator": r["estimator"], "estimate": r["estimate"], "median": r["median"],
        "p25": r["p25"], "p75": r["p75"], "iqr": iqr, "mean": r["mean"], "std": r["std"],
        "n": r["n"], "unstable": bool(st is not None and st.unstable), "source": r["source"],
        "resolutions": (r["extra"] or {}).get("resolutions"),
    }


@table_app.command("show")
def show_cmd(
    table: Path = typer.Argument(..., help="a latbench table (.db)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document instead of a table"),
    limit: Optional[int] = typer.Option(None, "--limit", min=0,
                                        help=f"rows to print (default {DEFAULT_SHOW_LIMIT}, all with "
                                        f"--json; 0 = all)"),
    kind: Optional[str] = typer.Option(None, "--kind", help="only rows of this op kind (conv, mbconv...)"),
) -> None:
    """Print a table's device profile, its ok/failed counts and its rows (key, median, IQR, n)."""
    from .store import LatencyTable

    with LatencyTable.open(table, create=False) as t:
        counts = t.counts()
        rows = [_row_view(r) for r in t.rows(kind=kind)]
        prof = t.profile
        meta = t.meta()
    if limit is None:
        limit = 0 if as_json else DEFAULT_SHOW_LIMIT
    shown = rows[:limit] if limit else rows
    if as_json:
        doc = {"table": str(table), "profile": prof.to_dict() if prof else None,
               "counts": {**counts, "total": sum(counts.values())}, "kind": kind,
               "rows_matching": len(rows), "meta": meta, "rows": shown}
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False, soft_wrap=True)
    con.print(f"profile: {prof.describe() if prof else 'none (empty table)'}", markup=False)
    con.print(f"rows: {counts['ok']} ok, {counts['failed']} failed"
              + (f"; {len(rows)} of kind {kind}" if kind else ""), markup=False)
    view = Table(show_edge=False)
    longest = max((len(r["key"]) for r in shown), default=3)
    view.add_column("key", overflow="fold", min_width=min(longest, max(20, con.width - 62)))
    for col in ("estimate ms", "by", "median", "IQR", "n"):
        view.add_column(col, justify="right", no_wrap=True)
    view.add_column("note", overflow="fold")
    for r in shown:
        note = f"failed: {r['error']}" if r["status"] != "ok" else ("unstable" if r["unstable"] else "")
        view.add_row(r["key"], _fmt_ms(r["estimate"]), r["estimator"] if r["status"] == "ok" else "-", _fmt_ms(r["median"]),
                     _fmt_ms(r["iqr"]), "-" if r["n"] is None else str(r["n"]), note)
    if shown:
        con.print(view)
    if len(shown) < len(rows):
        _log(f"{len(rows) - len(shown)} more rows (--limit 0 shows all)")


@table_app.command("export")
def export_cmd(
    table: Path = typer.Argument(..., help="a latbench table (.db)"),
    fmt: TableFormat = typer.Option(..., "--format", "-f", help="csv | paddleslim | ofa-yaml"),
    out: Path = typer.Option(..., "--out", "-o",
                             help="output file; for ofa-yaml a directory gets one "
                             "{r}_lookup_table.yaml per resolution"),
    skip_unsupported: bool = typer.Option(False, "--skip-unsupported",
                                          help="leave out rows the format cannot express (counted) "
                                          "instead of failing"),
) -> None:
    """Write a table as CSV (lossless, with a .meta.json profile sidecar), PaddleSlim text or OFA YAML."""
    from . import store, tableio

    with store.LatencyTable.open(table, create=False) as t:
        if fmt is TableFormat.csv:
            res = tableio.export_csv(t, out)
        elif fmt is TableFormat.paddleslim:
            res = tableio.export_paddleslim(t, out, skip_unsupported=skip_unsupported)
        else:
            res = tableio.export_ofa_yaml(t, out, skip_unsupported=skip_unsupported)
    _log(f"{table} -> {', '.join(res.files) or out}: {res.describe()}")


def _detect_format(path: Path) -> TableFormat:
    name = path.name.lower()
    if name.endswith(".csv"):
        return TableFormat.csv
    if name.endswith((".yaml", ".yml")):
        return TableFormat.ofa_yaml
    if name.endswith(".txt"):
        return TableFormat.paddleslim
    raise UsageError(f"cannot tell the format of {path} from its name: pass --format csv|paddleslim|ofa-yaml")


@table_app.command("import")
def import_cmd(
    files: List[Path] = typer.Argument(..., help="files to import"),
    out: Path = typer.Option(..., "--out", "-o", help="the latbench table to import into (created if missing)"),
    fmt: Optional[TableFormat] = typer.Option(None, "--format", "-f",
                                              help="csv | paddleslim | ofa-yaml (default: from the "
                                              "file name: .csv, .txt, .yaml)"),
    device: Optional[str] = typer.Option(None, "--device",
                                         help="device the numbers were measured on (needed for "
                                         "paddleslim and ofa-yaml; a CSV carries its own profile)"),
    runtime: str = typer.Option("unknown", "--runtime", help="runtime the numbers were measured with"),
    threads: int = typer.Option(0, "--threads", min=0, help="threads used when measuring (0 = unknown)"),
) -> None:
    """Import CSV exports, PaddleSlim latency tables or Once-for-All lookup-table YAML into a table."""
    from . import store, tableio

    fmts = {fmt or _detect_format(f) for f in files}
    if len(fmts) != 1:
        raise UsageError("the files have different formats by their names: import them separately or pass --format")
    kind = fmts.pop()
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    profile = None
    if device is not None:
        profile = tableio.import_profile(device, runtime, threads, source=", ".join(f.name for f in files))
    elif kind is not TableFormat.csv:
        raise UsageError(f"importing {kind.value} needs --device NAME (and ideally --runtime, --threads): "
                         f"the file does not say where its numbers were measured")
    new = not out.exists()
    total = tableio.Transfer()
    try:
        with store.LatencyTable.open(out, create=True) as t:
            if kind is TableFormat.ofa_yaml:
                total = tableio.import_ofa_yaml(files, t, profile)
            else:
                for f in files:
                    res = (tableio.import_csv(f, t, profile) if kind is TableFormat.csv
                           else tableio.import_paddleslim(f, t, profile))
                    total.written += res.written
                    total.files += res.files
            counts = t.counts()
    except BaseException:
        if new:  # leave no half-made table behind
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.remove(f"{out}{suffix}")
                except OSError:
                    pass
        raise
    _log(f"{', '.join(total.files)} -> {out}: {total.written} rows imported; the table holds "
         f"{counts['ok']} ok, {counts['failed']} failed")


@table_app.command("merge")
def merge_cmd(
    dst: Path = typer.Argument(..., help="the table to merge into (created if missing)"),
    srcs: List[Path] = typer.Argument(..., help="tables to merge from"),
    force: bool = typer.Option(False, "--force",
                               help="merge tables of other device profiles too (rows record their "
                               "source profile id in extra)"),
) -> None:
    """Merge tables of one device profile into DST (a failed row never replaces an ok one)."""
    from . import store, tableio

    missing = [str(s) for s in srcs if not s.is_file()]
    if missing:
        raise UsageError(f"no such table: {', '.join(missing)}")
    new = not dst.exists()
    try:
        with store.LatencyTable.open(dst, create=True) as t:
            res = tableio.merge(t, srcs, force=force)
            counts = t.counts()
    except BaseException:
        if new:
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.remove(f"{dst}{suffix}")
                except OSError:
                    pass
        raise
    _log(f"{', '.join(res.files)} -> {dst}: {res.written} rows merged; the table holds "
         f"{counts['ok']} ok, {counts['failed']} failed")


__all__ = ["table_app"]
