"""`latbench table show|check|export|import|merge|combine`: look into a latency table, list its rows
taken in a slow spell, move it between formats, put tables of one device together, or combine
several devices' tables into a new one.

Mounted by latbench/cli/app.py as `app.add_typer(table_app, name="table")`; library errors are
LatbenchError subclasses, which cli.run turns into one stderr line and an exit code. Data goes to
stdout (the rows, `--json`), summaries to stderr.
"""
from __future__ import annotations

import enum
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer

from .. import ops as O
from ..errors import UsageError

table_app = typer.Typer(
    name="table",
    help="Show a latency table, list its suspect rows, export it to CSV / JSONL / PaddleSlim text / "
    "Once-for-All YAML, import those back, merge tables of one device profile, combine several devices' tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_SHOW_LIMIT = 50


class TableFormat(str, enum.Enum):
    csv = "csv"
    jsonl = "jsonl"
    paddleslim = "paddleslim"
    ofa_yaml = "ofa-yaml"


FORMAT_CHOICES = "csv | jsonl | paddleslim | ofa-yaml"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.4g}"


def _row_view(r: dict[str, Any], ref_median: float | None = None) -> dict[str, Any]:
    """The fields `show` prints for one row: `suspect` when it shows a slow spell's signs
    (latbench.suspect; `ref_median` the table's reference median), `unstable` when it still does
    after it was timed again; `by_resolution` holds each resolution's entry of a key with one
    value per resolution (else null); `hot` marks a row measured while the device was above its
    temperature limit."""
    from ..coverage import row_values
    from ..suspect import EARLIER, row_signs

    extra = r["extra"] or {}
    signs = row_signs(r["estimator"], r["median"], r["mean"], r["min"], extra, ref_median) if r["status"] == "ok" else ()
    iqr = r["p75"] - r["p25"] if r["p25"] is not None and r["p75"] is not None else None
    per = row_values(r)
    return {
        "key": r["key"], "kind": r["kind"], "status": r["status"], "error": r["error"],
        "estimator": r["estimator"], "estimate": r["estimate"], "median": r["median"],
        "p25": r["p25"], "p75": r["p75"], "iqr": iqr, "mean": r["mean"], "std": r["std"],
        "n": r["n"], "suspect": bool(signs), "unstable": bool(signs) and bool(extra.get(EARLIER)),
        "source": r["source"],
        "resolutions": (r["extra"] or {}).get("resolutions"),
        "by_resolution": {str(k): per[k] for k in sorted(per)} or None,
        "hot": bool((r["extra"] or {}).get("hot")),
        "fit": (r["extra"] or {}).get("fit"),
    }


def _note(r: dict[str, Any]) -> str:
    """The note column of one row: failed, suspect or unstable, hot, its values per resolution."""
    if r["status"] != "ok":
        return f"failed: {r['error']}"
    words = [w for w in ("unstable" if r["unstable"] else "suspect" if r["suspect"] else "",
                         "hot" if r["hot"] else "") if w]
    fit = r.get("fit")
    if fit:
        if fit.get("prior_only"):
            words.append("prior only (no measured network holds it)")
        elif fit.get("sd_ms") is None:
            words.append(f"fitted, in {fit.get('networks')} networks (the prior's cost: no spread)")
        else:
            words.append(f"fitted +-{_fmt_ms(fit.get('sd_ms'))} ms, in {fit.get('networks')} networks")
    if r["by_resolution"]:
        words.append("per resolution: " + ", ".join(f"{k} {_fmt_ms(e['estimate'])}"
                                                    for k, e in r["by_resolution"].items()))
    return "; ".join(words)


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
    from ..store import LatencyTable
    from ..suspect import reference_median

    if kind is not None and kind not in O.KINDS:
        raise UsageError(f"--kind {kind!r} is not an op kind (one of {', '.join(O.KINDS)})")
    with LatencyTable.open(table, readonly=True) as t:
        counts = t.counts()
        ref = reference_median(t)
        rows = [_row_view(r, ref) for r in t.rows(kind=kind)]
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
    run = meta.get("profile_run") or {}  # RunSettings keeps `other`'s entries at its top level
    fit = run.get("fit")
    if fit:
        how = dict(prof.options).get("fit") if prof else None
        how = how or f"refined from {fit['networks']} networks ({run.get('source')})"
        con.print(f"{how}; per-network cost {_fmt_ms(fit.get('intercept_ms'))} ms", markup=False)
    if meta.get("space"):
        con.print(f"space: {meta['space']['name']} ({meta['space']['how']})", markup=False)
    elif run.get("spaces"):
        con.print(f"space: {', '.join(run['spaces'])} (profiled)", markup=False)
    con.print(f"rows: {counts['ok']} ok, {counts['failed']} failed"
              + (f"; {len(rows)} of kind {kind}" if kind else ""), markup=False)
    view = Table(show_edge=False)
    longest = max((len(r["key"]) for r in shown), default=3)
    view.add_column("key", overflow="fold", min_width=min(longest, max(20, con.width - 62)))
    for col in ("estimate ms", "by", "median", "IQR", "n"):
        view.add_column(col, justify="right", no_wrap=True)
    view.add_column("note", overflow="fold")
    for r in shown:
        view.add_row(r["key"], _fmt_ms(r["estimate"]), r["estimator"] if r["status"] == "ok" else "-", _fmt_ms(r["median"]),
                     _fmt_ms(r["iqr"]), "-" if r["n"] is None else str(r["n"]), _note(r))
    if shown:
        con.print(view)
    if len(shown) < len(rows):
        _log(f"{len(rows) - len(shown)} more rows (--limit 0 shows all)")


@table_app.command("check")
def check_cmd(
    table: Path = typer.Argument(..., help="a latbench table (.db)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """List the rows that look taken in a slow spell of the machine, with why (exit 3 when any):
    an estimate far above the row's fastest round, rounds far apart, a reference kernel timed in
    its batch far slower than over the profile. `unstable`: still so after it was timed again."""
    from ..measure import LIMIT_OVER_FASTEST, LIMIT_REFERENCE, LIMIT_ROUND_SPREAD
    from ..store import LatencyTable
    from ..suspect import reference_median, suspects

    with LatencyTable.open(table, readonly=True) as t:
        found = suspects(t)
        ok = t.counts()["ok"]
        ref = reference_median(t)
    unstable = sum(x.unstable for x in found)
    if as_json:
        sys.stdout.write(json.dumps({
            "table": str(table), "rows": ok, "suspect": len(found), "unstable": unstable,
            "reference_median_ms": ref, "limits": {"over_fastest": LIMIT_OVER_FASTEST,
                                                   "round_spread": LIMIT_ROUND_SPREAD, "reference": LIMIT_REFERENCE},
            "rows_suspect": [x.to_dict() for x in found]}, indent=1) + "\n")
    else:
        for x in found:
            typer.echo(x.text())
        _log(f"{table}: {len(found)} of {ok} rows suspect, {unstable} of them unstable (still so after being "
             f"timed again)" + (f"; `latbench profile --device D --out {table} --retime-suspect` times them again"
                               if found else ""))
    if found:
        raise typer.Exit(3)


@table_app.command("export")
def export_cmd(
    table: Path = typer.Argument(..., help="a latbench table (.db)"),
    fmt: TableFormat = typer.Option(..., "--format", "-f", help=FORMAT_CHOICES),
    out: Path = typer.Option(..., "--out", "-o",
                             help="output file; for ofa-yaml a directory gets one "
                             "{r}_lookup_table.yaml per resolution"),
    skip_unsupported: bool = typer.Option(False, "--skip-unsupported",
                                          help="leave out rows the format cannot express (counted) "
                                          "instead of failing"),
    drop_calibration: bool = typer.Option(False, "--drop-calibration",
                                          help="ofa-yaml: leave the table's calibration out (the "
                                          "format cannot hold one; without this flag such a table "
                                          "is refused)"),
) -> None:
    """Write a table as CSV (with a .meta.json sidecar) or JSONL, both lossless; PaddleSlim text
    (with a .meta.json sidecar for what the text cannot hold); or OFA YAML."""
    from .. import formats, store

    if drop_calibration and fmt is not TableFormat.ofa_yaml:
        raise UsageError(f"--drop-calibration is for formats that cannot hold a calibration (ofa-yaml); "
                         f"{fmt.value} keeps it")
    with store.LatencyTable.open(table, readonly=True) as t:
        if fmt is TableFormat.csv:
            res = formats.export_csv(t, out)
        elif fmt is TableFormat.jsonl:
            res = formats.export_jsonl(t, out)
        elif fmt is TableFormat.paddleslim:
            res = formats.export_paddleslim(t, out, skip_unsupported=skip_unsupported)
        else:
            res = formats.export_ofa_yaml(t, out, skip_unsupported=skip_unsupported,
                                          drop_calibration=drop_calibration)
    _log(f"{table} -> {', '.join(res.files) or out}: {res.describe()}")
    for note in res.notes:
        _log(note)


def _expand_dirs(files: List[Path]) -> List[Path]:
    """A directory stands for the OFA YAML files in it (what `table export -f ofa-yaml` writes)."""
    out: List[Path] = []
    for f in files:
        if f.is_dir():
            found = sorted(p for p in f.iterdir() if p.suffix.lower() in (".yaml", ".yml") and p.is_file())
            if not found:
                raise UsageError(f"{f} is a directory with no .yaml files (OFA's {{r}}_lookup_table.yaml) in it")
            out += found
        else:
            out.append(f)
    return out


def _detect_format(path: Path) -> TableFormat:
    name = path.name.lower()
    for ends, fmt in ((".csv", TableFormat.csv), (".jsonl", TableFormat.jsonl),
                      ((".yaml", ".yml"), TableFormat.ofa_yaml), (".txt", TableFormat.paddleslim)):
        if name.endswith(ends):
            return fmt
    raise UsageError(f"cannot tell the format of {path} from its name: pass --format {FORMAT_CHOICES.replace(' | ', '|')}")


def _needs_device(kind: TableFormat, files: List[Path]) -> bool:
    """True when the files do not say where their numbers were measured: OFA YAML, and PaddleSlim
    text without its latbench sidecar (CSV and JSONL carry their profile)."""
    from ..formats import paddleslim_meta_path

    if kind is TableFormat.paddleslim:
        return not all(os.path.exists(paddleslim_meta_path(f)) for f in files)
    return kind is TableFormat.ofa_yaml


@contextmanager
def _new_table(path: Path) -> Iterator[Any]:
    """The table at `path` opened for writing; a table this call created is removed again when
    the command fails, so no half-made table is left behind."""
    from ..store import LatencyTable

    new = not path.exists()
    try:
        with LatencyTable.open(path) as t:
            yield t
    except BaseException:
        if new:
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.remove(f"{path}{suffix}")
                except OSError:
                    pass
        raise


@table_app.command("import")
def import_cmd(
    files: List[Path] = typer.Argument(..., help="files to import"),
    out: Path = typer.Option(..., "--out", "-o", help="the latbench table to import into (created if missing)"),
    fmt: Optional[TableFormat] = typer.Option(None, "--format", "-f",
                                              help=f"{FORMAT_CHOICES} (default: from the file name: "
                                              ".csv, .jsonl, .txt, .yaml)"),
    device: Optional[str] = typer.Option(None, "--device",
                                         help="device the numbers were measured on (needed for "
                                         "ofa-yaml and for paddleslim text without its latbench "
                                         "sidecar; CSV and JSONL carry their own profile)"),
    runtime: str = typer.Option("unknown", "--runtime", help="runtime the numbers were measured with"),
    threads: int = typer.Option(0, "--threads", min=0, help="threads used when measuring (0 = unknown)"),
    space: Optional[str] = typer.Option(None, "--space", "-s",
                                        help="ofa-yaml: the space the files belong to (default: inferred "
                                        "from the stem Conv and Logits keys)"),
) -> None:
    """Import CSV / JSONL exports, PaddleSlim latency tables or Once-for-All lookup-table YAML into a table."""
    from .. import formats
    from ..merge import Transfer

    files = _expand_dirs(files)
    fmts = {fmt or _detect_format(f) for f in files}
    if len(fmts) != 1:
        raise UsageError("the files have different formats by their names: import them separately or pass --format")
    kind = fmts.pop()
    if space is not None and kind is not TableFormat.ofa_yaml:
        raise UsageError(f"--space is for ofa-yaml imports; {kind.value} files carry their own meta")
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    odd = [str(f) for f in files if not f.is_file()]
    if odd:
        raise UsageError(f"not a regular file: {', '.join(odd)}")
    profile = None
    if device is not None:
        profile = formats.import_profile(device, runtime, threads, source=", ".join(f.name for f in files))
    elif _needs_device(kind, files):
        raise UsageError(f"importing {kind.value} needs --device NAME (and ideally --runtime, --threads): "
                         f"the file does not say where its numbers were measured")
    importers = {TableFormat.csv: formats.import_csv, TableFormat.jsonl: formats.import_jsonl,
                 TableFormat.paddleslim: formats.import_paddleslim}
    total = Transfer()
    with _new_table(out) as t:
        if kind is TableFormat.ofa_yaml:
            total = formats.import_ofa_yaml(files, t, profile, space)
        else:
            for f in files:
                res = importers[kind](f, t, profile)
                total.written += res.written
                total.files += res.files
        counts = t.counts()
    _log(f"{', '.join(total.files)} -> {out}: {total.written} rows imported; the table holds "
         f"{counts['ok']} ok, {counts['failed']} failed")
    for note in total.notes:
        _log(note)


def _check_tables(srcs: List[Path]) -> None:
    missing = [str(s) for s in srcs if not s.is_file()]
    if missing:
        raise UsageError(f"no such table: {', '.join(missing)}")


@table_app.command("merge")
def merge_cmd(
    dst: Path = typer.Argument(..., help="the table to merge into (created if missing)"),
    srcs: List[Path] = typer.Argument(..., help="tables to merge from, of DST's device profile"),
) -> None:
    """Merge tables of one device profile into DST: a later source replaces a key, a failed row
    never replaces an ok one; a table of another profile is refused (see `table combine`)."""
    from ..merge import merge

    _check_tables(srcs)
    with _new_table(dst) as t:
        res = merge(t, srcs)
        counts = t.counts()
    _log(f"{', '.join(res.files)} -> {dst}: {res.describe_keys()}; the table holds "
         f"{counts['ok']} ok, {counts['failed']} failed")


@table_app.command("combine")
def combine_cmd(
    out: Path = typer.Argument(..., help="the NEW table of the combination (must not exist)"),
    srcs: List[Path] = typer.Argument(..., help="tables of several device profiles, in order of "
                                      "preference: a key comes from the first source with an ok row of it"),
) -> None:
    """Combine tables of several devices into a NEW table whose profile names them; every row keeps
    the profile it was measured under. Predict and search use it like any table."""
    from ..combine import combine

    _check_tables(srcs)
    if out.exists():
        raise UsageError(f"{out} exists: a combination goes into a new table (use `table merge` "
                         f"for tables of one device profile)")
    with _new_table(out) as t:
        res = combine(t, srcs)
        prof, counts = t.profile, t.counts()
    for note in res.notes:
        _log(f"  {note}")
    _log(f"{', '.join(res.files)} -> {out}: {res.added} rows from {len(res.files)} tables "
         f"({res.left} keys held by an earlier source); profile {prof.describe()}; the table holds "
         f"{counts['ok']} ok, {counts['failed']} failed")


__all__ = ["table_app"]
