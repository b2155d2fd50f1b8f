"""The latency table: an SQLite file that is latbench's store of record, plus its exports/imports.

One row per op key, holding everything a Measurement carries (statistics, raw samples, settings,
extra facts such as temperatures or the resolutions an op belongs to) and the number used for
prediction with the estimator it came from: `median` for our own measurements (`round_min`, the
fastest round's median, when timed in interleaved rounds), `mean` for rows imported from
Once-for-All YAML and for benchmark_model runs, `value` for PaddleSlim text, which has no
statistics. A spread
that the source did not give stays NULL; nothing is invented. No pickle anywhere: JSON and SQL.

Durability: WAL journal, `synchronous=NORMAL`, one transaction per `add`. In WAL mode a commit is
complete once its frames are written to the -wal file, which lives in the OS page cache and so
survives the death of the process (SIGKILL, Ctrl-C, OOM kill): a killed profile loses at most
the op in flight. NORMAL skips the fsync per commit that FULL adds; what it risks is only the
last commits on a power loss or kernel crash, never corruption (WAL replays whole transactions),
and those ops are simply re-measured on resume. FULL would cost an fsync per op (tens of ms on
phone-attached laptops and SD cards) and slow bulk imports, for no gain against process death.

One device profile per table: stored on first use; opening or setting another one raises
ProfileMismatchError naming both profiles and the fields that differ.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence, Union

from .device import DeviceProfile
from .errors import FormatError, LatbenchError, OpError, UsageError
from .measure import Measurement, Stats
from .ops import OpSpec
from .profiling import merge_run_meta

if TYPE_CHECKING:  # pragma: no cover
    import pandas

PathLike = Union[str, "os.PathLike[str]"]

FORMAT_NAME = "latbench-table"
FORMAT_VERSION = 1
CSV_FORMAT_NAME = "latbench-table-csv"
SQLITE_MAGIC = b"SQLite format 3\x00"
RESERVED_META = ("format", "version", "profile")
ESTIMATORS = ("median", "round_min", "mean", "min", "value")
STATUSES = ("ok", "failed")

# Column order of the table, of to_frame() and of the CSV export.
COLUMNS = (
    "key", "kind", "status", "error", "estimator", "estimate",
    "median", "p25", "p75", "min", "max", "mean", "std", "n", "block",
    "wall_s", "timed_s", "taken_at", "source", "profile_id",
    "op", "settings", "extra", "samples",
)
FLOAT_COLUMNS = ("estimate", "median", "p25", "p75", "min", "max", "mean", "std", "wall_s",
                 "timed_s", "taken_at")
INT_COLUMNS = ("n", "block")
JSON_COLUMNS = ("op", "settings", "extra", "samples")
STAT_FIELDS = ("median", "p25", "p75", "min", "max", "mean", "std")

_SCHEMA = """
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL                 -- JSON
);
CREATE TABLE measurements (
    key        TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error      TEXT NOT NULL DEFAULT '',
    estimator  TEXT,                    -- median | round_min | mean | min | value
    estimate   REAL,                    -- ms, what prediction uses
    median REAL, p25 REAL, p75 REAL, min REAL, max REAL, mean REAL, std REAL,
    n          INTEGER,                 -- samples (NULL when the source does not say)
    block      INTEGER,                 -- calls per sample
    wall_s     REAL,
    timed_s    REAL,
    taken_at   REAL,                    -- unix time
    source     TEXT NOT NULL,           -- measured | ofa-yaml:FILE | paddleslim:FILE | csv:FILE
    profile_id TEXT NOT NULL,
    op         TEXT NOT NULL,           -- JSON OpSpec.to_dict()
    settings   TEXT NOT NULL,           -- JSON
    extra      TEXT NOT NULL,           -- JSON
    samples    TEXT,                    -- JSON list of ms
    CHECK (status = 'failed' OR estimate IS NOT NULL)
);
CREATE INDEX measurements_status ON measurements(status);
"""


class ProfileMismatchError(LatbenchError):
    """A table holds numbers of one device profile; another one was given."""


class KeyNotFoundError(LatbenchError, KeyError):
    """A key has no usable (ok) row in the table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass
class Transfer:
    """What an export, import or merge did."""

    written: int = 0  # rows written (export) or stored (import, merge)
    skipped: list[str] = field(default_factory=list)  # keys the target format cannot express
    not_ok: int = 0  # failed rows left out (exports carry numbers only)
    files: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"{self.written} rows"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} unsupported skipped")
        if self.not_ok:
            parts.append(f"{self.not_ok} failed left out")
        return ", ".join(parts)


def _mismatch_message(what: str, have: DeviceProfile, other: DeviceProfile) -> str:
    diff = "; ".join(have.differences(other)) or "same fields, different id"
    return (f"{what}: the table's profile is {have.describe()}, the other is {other.describe()} "
            f"(differs in {diff})")


# ---------------------------------------------------------------------- small helpers
def _finite(x: Any) -> float | None:
    """A float for SQL, NULL for None/NaN."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def _op_for(key: str, op_dict: Any, where: str) -> OpSpec:
    """Rebuild the op of a row and check it is the op its key names."""
    if not isinstance(op_dict, dict):
        raise FormatError(f"{where}: op of {key!r} must be a JSON object, got {op_dict!r}")
    try:
        op = OpSpec.from_dict(op_dict)
    except (LatbenchError, TypeError, ValueError) as e:
        raise FormatError(f"{where}: op of {key!r} cannot be rebuilt: {e}") from None
    if op.key != key:
        raise OpError(f"{where}: key {key!r} does not match its op, whose key is {op.key!r}")
    return op


# ---------------------------------------------------------------------- the table
class LatencyTable:
    """One device profile's latency table in an SQLite file; see the module docstring."""

    def __init__(self, path: str, conn: sqlite3.Connection, profile: DeviceProfile | None):
        self.path = path
        self._conn = conn
        self._profile = profile

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: PathLike, profile: DeviceProfile | None = None, *,
             create: bool = True) -> "LatencyTable":
        """Open (or create) the table at `path`; with `profile`, check or store it."""
        p = os.fspath(path)
        if os.path.isdir(p):
            raise FormatError(f"{p} is not a latbench table (it is a directory)")
        size = os.path.getsize(p) if os.path.exists(p) else -1
        has_wal = os.path.exists(p + "-wal") and os.path.getsize(p + "-wal") > 0
        if size <= 0 and not has_wal:
            if not create:
                raise FormatError(f"{p}: no such latbench table" + (" (empty file)" if size == 0 else ""))
        elif size > 0:
            try:
                with open(p, "rb") as f:
                    head = f.read(len(SQLITE_MAGIC))
            except OSError as e:
                raise FormatError(f"{p}: cannot read: {e.strerror or e}") from None
            if head != SQLITE_MAGIC:
                raise FormatError(f"{p} is not a latbench table (not an SQLite database)")
        try:
            conn = sqlite3.connect(p, timeout=30.0, isolation_level=None)
        except sqlite3.Error as e:
            raise FormatError(f"{p}: cannot open: {e}") from None
        try:
            stored = cls._prepare(p, conn)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise FormatError(f"{p} is not a latbench table ({e})") from None
        except BaseException:
            conn.close()
            raise
        table = cls(p, conn, stored)
        if profile is not None:
            try:
                table.set_profile(profile)
            except BaseException:
                table.close()
                raise
        return table

    @staticmethod
    def _prepare(p: str, conn: sqlite3.Connection) -> DeviceProfile | None:
        """Check (or create) the schema; return the stored profile."""
        conn.execute("PRAGMA busy_timeout = 30000")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            others = sorted(t for t in tables if not t.startswith("sqlite_"))
            if others:
                raise FormatError(f"{p} is not a latbench table (an SQLite database without "
                                  f"latbench's meta table; it holds: {', '.join(others[:8])})")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                    conn.executemany("INSERT INTO meta(name, value) VALUES (?, ?)", [
                        ("format", json.dumps(FORMAT_NAME)), ("version", json.dumps(FORMAT_VERSION)),
                        ("created_at", json.dumps(time.time())),
                    ])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        rows = dict(conn.execute("SELECT name, value FROM meta WHERE name IN ('format', 'version', 'profile')"))
        try:
            fmt = json.loads(rows.get("format", "null"))
            version = json.loads(rows.get("version", "null"))
        except ValueError:
            fmt = version = None
        if fmt != FORMAT_NAME:
            raise FormatError(f"{p} is not a latbench table (its meta table names format {fmt!r})")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise FormatError(f"{p}: table format version {version!r} is newer than this latbench "
                              f"reads (<= {FORMAT_VERSION}); upgrade latbench")
        if "measurements" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}:
            raise FormatError(f"{p} is not a latbench table (no measurements table)")
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError:  # read-only file or directory: reading still works
            pass
        conn.execute("PRAGMA synchronous = NORMAL")
        if "profile" in rows:
            try:
                return DeviceProfile.from_dict(json.loads(rows["profile"]))
            except (ValueError, TypeError) as e:
                raise FormatError(f"{p}: stored device profile is unreadable: {e}") from None
        return None

    def __enter__(self) -> "LatencyTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        prof = self._profile.id if self._profile else "no profile"
        return f"LatencyTable({self.path!r}, {prof})"

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise UsageError(f"{self.path}: the table is closed")
        return self._conn

    def _tx(self):
        return _Transaction(self.conn)

    # ------------------------------------------------------------------ profile and meta
    @property
    def profile(self) -> DeviceProfile | None:
        return self._profile

    def set_profile(self, profile: DeviceProfile) -> None:
        """Store `profile` on first use; a different one raises ProfileMismatchError."""
        if self._profile is not None:
            if self._profile.id != profile.id:
                raise ProfileMismatchError(_mismatch_message(self.path, self._profile, profile))
            return
        with self._tx():
            self.conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES ('profile', ?)",
                              (_dumps(profile.to_dict()),))
        self._profile = profile

    def require_profile(self) -> DeviceProfile:
        if self._profile is None:
            raise UsageError(f"{self.path}: the table has no device profile yet; open it with a "
                             f"profile or call set_profile first")
        return self._profile

    def meta_get(self, name: str, default: Any = None) -> Any:
        """A JSON value stored under `name` (e.g. a calibration), or `default`."""
        row = self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return default if row is None else json.loads(row[0])

    def meta_set(self, name: str, value: Any) -> None:
        """Store a JSON-able value under `name` (format, version and profile are reserved)."""
        if name in RESERVED_META:
            raise UsageError(f"meta name {name!r} is reserved (use set_profile for the profile)")
        text = json.dumps(value, sort_keys=True)
        with self._tx():
            self.conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)", (name, text))

    def meta(self) -> dict[str, Any]:
        """Every meta entry but the reserved ones."""
        out = {}
        for name, value in self.conn.execute("SELECT name, value FROM meta ORDER BY name"):
            if name not in RESERVED_META:
                out[name] = json.loads(value)
        return out

    # ------------------------------------------------------------------ writing
    def add(self, m: Measurement, *, source: str = "measured", estimator: str = "median",
            estimate: float | None = None) -> None:
        """Store one measurement in its own transaction (a re-added key replaces the old row)."""
        row = self._measurement_row(m, source, estimator, estimate)
        with self._tx():
            self._insert(row)

    def add_many(self, measurements: Iterable[Measurement], *, source: str = "measured",
                 estimator: str = "median") -> int:
        """Store many measurements in one transaction (imports); returns how many."""
        rows = [self._measurement_row(m, source, estimator, None) for m in measurements]
        self._put_rows(rows)
        return len(rows)

    def _put_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        with self._tx():
            for row in rows:
                self._insert(row)

    def _insert(self, row: dict[str, Any]) -> None:
        cols = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        self.conn.execute(f"INSERT OR REPLACE INTO measurements ({cols}) VALUES ({marks})",
                          [_to_sql(c, row.get(c)) for c in COLUMNS])

    def _measurement_row(self, m: Measurement, source: str, estimator: str,
                         estimate: float | None) -> dict[str, Any]:
        prof = self.require_profile()
        if m.profile_id and m.profile_id != prof.id:
            raise ProfileMismatchError(
                f"{self.path}: the measurement of {m.key} was taken under profile {m.profile_id}, "
                f"the table's profile is {prof.describe()}")
        if m.status not in STATUSES:
            raise UsageError(f"{m.key}: status must be ok or failed, got {m.status!r}")
        if estimator not in ESTIMATORS:
            raise UsageError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        _op_for(m.key, m.op, self.path)
        s = m.stats
        row: dict[str, Any] = {
            "key": m.key, "kind": m.op.get("kind", ""), "status": m.status, "error": m.error or "",
            "estimator": estimator, "estimate": None, "wall_s": m.wall_s, "timed_s": m.timed_s,
            "taken_at": m.taken_at, "source": source, "profile_id": prof.id, "op": m.op,
            "settings": dict(m.settings), "extra": dict(m.extra), "samples": None,
        }
        if s is not None:
            for f in STAT_FIELDS:
                row[f] = _finite(getattr(s, f))
            row["n"] = s.n or None
            row["block"] = s.block or None
            row["samples"] = list(s.samples) if s.samples else None
        if m.status == "ok":
            if estimate is None:
                if estimator == "value" or s is None:
                    raise UsageError(f"{m.key}: an ok measurement needs statistics or an explicit estimate")
                estimate = getattr(s, estimator)
            est = _finite(estimate)
            if est is None or not math.isfinite(est) or est < 0:
                raise UsageError(f"{m.key}: estimate must be a finite number >= 0, got {estimate!r}")
            row["estimate"] = est
        return row

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]

    def __contains__(self, key: object) -> bool:
        """True when `key` has a row of any status (use `keys()` for ok rows)."""
        return self.conn.execute("SELECT 1 FROM measurements WHERE key = ?", (key,)).fetchone() is not None

    def counts(self) -> dict[str, int]:
        """Rows per status: {"ok": n, "failed": m}."""
        out = {s: 0 for s in STATUSES}
        for status, n in self.conn.execute("SELECT status, COUNT(*) FROM measurements GROUP BY status"):
            out[status] = n
        return out

    def keys(self, status: str | None = "ok") -> set[str]:
        """Keys with rows of `status` (None: every row)."""
        if status is None:
            return {r[0] for r in self.conn.execute("SELECT key FROM measurements")}
        return {r[0] for r in self.conn.execute("SELECT key FROM measurements WHERE status = ?", (status,))}

    def rows(self, status: str | None = None, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """Every stored column of each row (JSON decoded), ordered by key."""
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        sql = f"SELECT {', '.join(COLUMNS)} FROM measurements"
        if where:
            sql += " WHERE " + " AND ".join(where)
        for rec in self.conn.execute(sql + " ORDER BY key", args).fetchall():
            yield _from_sql(rec)

    def row(self, key: str) -> dict[str, Any] | None:
        """Every stored column of one row, or None."""
        rec = self.conn.execute(f"SELECT {', '.join(COLUMNS)} FROM measurements WHERE key = ?",
                                (key,)).fetchone()
        return None if rec is None else _from_sql(rec)

    def get(self, key: str) -> Measurement | None:
        """The Measurement stored under `key` (any status), or None."""
        r = self.row(key)
        return None if r is None else row_to_measurement(r)

    def measurements(self, status: str | None = None) -> Iterator[Measurement]:
        """Every stored Measurement (status None: ok and failed), ordered by key."""
        for r in self.rows(status):
            yield row_to_measurement(r)

    def estimate(self, key: str) -> float:
        """The latency (ms) prediction uses for `key`; KeyNotFoundError when absent or failed."""
        rec = self.conn.execute("SELECT status, estimate, error FROM measurements WHERE key = ?",
                                (key,)).fetchone()
        if rec is None:
            raise KeyNotFoundError(f"{key} is not in {self.path}")
        if rec[0] != "ok":
            raise KeyNotFoundError(f"{key} failed in {self.path}: {rec[2]}")
        return float(rec[1])

    def estimates(self) -> dict[str, float]:
        """key -> estimate (ms) of every ok row."""
        return {k: float(v) for k, v in
                self.conn.execute("SELECT key, estimate FROM measurements WHERE status = 'ok'")}

    def ops(self, status: str | None = "ok") -> list[OpSpec]:
        """The OpSpecs of the rows of `status` (None: all), rebuilt from their stored op JSON."""
        sql = "SELECT op FROM measurements" + (" WHERE status = ?" if status else "") + " ORDER BY key"
        return [OpSpec.from_dict(json.loads(r[0])) for r in self.conn.execute(sql, (status,) if status else ())]

    def to_frame(self) -> "pandas.DataFrame":
        """Every row and column as a DataFrame (JSON columns as text), ordered by key."""
        import pandas as pd

        return pd.read_sql_query(f"SELECT {', '.join(COLUMNS)} FROM measurements ORDER BY key",
                                 self.conn)

    def integrity_check(self) -> str:
        """SQLite's own check: 'ok' when the file is sound."""
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


def _to_sql(col: str, v: Any) -> Any:
    if col in JSON_COLUMNS:
        return None if v is None else _dumps(v)
    if col in FLOAT_COLUMNS:
        return _finite(v)
    if col in INT_COLUMNS:
        return None if v is None else int(v)
    return v


def _from_sql(rec: Sequence[Any]) -> dict[str, Any]:
    row = dict(zip(COLUMNS, rec))
    for c in JSON_COLUMNS:
        if row[c] is not None:
            row[c] = json.loads(row[c])
    return row


def row_to_measurement(row: dict[str, Any]) -> Measurement:
    """A Measurement from a stored row, so callers see the same type the agents produce."""
    # statistics the source did not give are NaN (n, block 0); a row without any statistic
    # (e.g. PaddleSlim text) has stats=None; its number is the row's estimate
    stats = None
    if row["status"] == "ok" and any(row.get(f) is not None for f in STAT_FIELDS + ("n",)):
        stats = Stats(**{f: _nan(row.get(f)) for f in STAT_FIELDS}, n=int(row.get("n") or 0),
                      block=int(row.get("block") or 0), samples=tuple(row.get("samples") or ()),
                      rounds=tuple((row.get("extra") or {}).get("round_medians") or ()))
    return Measurement(
        key=row["key"], profile_id=row["profile_id"], op=row["op"], stats=stats,
        settings=row.get("settings") or {}, status=row["status"], error=row.get("error") or "",
        wall_s=row.get("wall_s") or 0.0, timed_s=row.get("timed_s") or 0.0,
        taken_at=row.get("taken_at") or 0.0, extra=row.get("extra") or {},
    )


def read_table(path: PathLike) -> "pandas.DataFrame":
    """A latbench table file as a DataFrame, in one call."""
    with LatencyTable.open(path, create=False) as t:
        return t.to_frame()


# ---------------------------------------------------------------------- profiles of imports
def import_profile(device: str, runtime: str = "unknown", threads: int = 0, source: str = "") -> DeviceProfile:
    """The profile of imported foreign numbers, so a table still says where they were measured."""
    # `source` goes into info, which is not hashed: files imported from one device share a profile
    if not device or not device.strip():
        raise UsageError("importing a foreign table needs the device it was measured on (--device NAME)")
    if threads < 0:
        raise UsageError(f"threads must be >= 0 (0 = unknown), got {threads}")
    return DeviceProfile(agent="import", runtime=runtime or "unknown", runtime_version="",
                         threads=int(threads), delegate="cpu", device=device.strip(),
                         info={"source": source} if source else {})


def _use_profile(table: LatencyTable, profile: DeviceProfile | None, what: str) -> DeviceProfile:
    if profile is not None:
        table.set_profile(profile)
    if table.profile is None:
        raise UsageError(f"importing {what} into {table.path} needs a device profile: the table has "
                         f"none yet (pass --device NAME, or import_profile(...))")
    return table.profile


# ---------------------------------------------------------------------- CSV
def csv_meta_path(path: PathLike) -> str:
    """The JSON sidecar of a CSV export (`x.csv` -> `x.meta.json`): profile and meta entries."""
    p = os.fspath(path)
    return (p[:-4] if p.lower().endswith(".csv") else p) + ".meta.json"


def export_csv(table: LatencyTable, path: PathLike) -> Transfer:
    """Every row and column (failed rows too) as CSV, plus the profile in a `.meta.json` sidecar."""
    p = os.fspath(path)
    rows = list(table.rows())
    try:
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for r in rows:
                w.writerow(["" if r[c] is None else (_dumps(r[c]) if c in JSON_COLUMNS else
                            repr(float(r[c])) if c in FLOAT_COLUMNS else r[c]) for c in COLUMNS])
        side = {"format": CSV_FORMAT_NAME, "version": FORMAT_VERSION,
                "profile": table.profile.to_dict() if table.profile else None,
                "meta": table.meta(), "columns": list(COLUMNS)}
        with open(csv_meta_path(p), "w", encoding="utf-8") as f:
            json.dump(side, f, indent=2, sort_keys=True)
            f.write("\n")
    except OSError as e:
        raise FormatError(f"{p}: cannot write: {e.strerror or e}") from None
    return Transfer(written=len(rows), files=[p, csv_meta_path(p)])


def _read_sidecar(p: str) -> dict[str, Any] | None:
    side = csv_meta_path(p)
    if not os.path.exists(side):
        return None
    try:
        with open(side, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise FormatError(f"{side}: not a latbench CSV sidecar: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != CSV_FORMAT_NAME:
        raise FormatError(f"{side}: not a latbench CSV sidecar (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    return doc


def import_csv(path: PathLike, out_table: LatencyTable, profile: DeviceProfile | None = None) -> Transfer:
    """Rows of a CSV export into `out_table`, losslessly, under the profile its sidecar names."""
    # without a sidecar the profile is `profile` or the table's own; sidecar meta entries the
    # table lacks (e.g. a calibration) are copied
    p = os.fspath(path)
    side = _read_sidecar(p)
    side_prof = None
    if side and side.get("profile"):
        try:
            side_prof = DeviceProfile.from_dict(side["profile"])
        except (TypeError, ValueError) as e:
            raise FormatError(f"{csv_meta_path(p)}: profile is unreadable: {e}") from None
        if profile is not None and profile.id != side_prof.id:
            raise ProfileMismatchError(_mismatch_message(f"{p} (profile of its sidecar)", side_prof, profile))
    prof = _use_profile(out_table, side_prof or profile, p)
    rows = _read_csv_rows(p, prof.id)
    out_table._put_rows(rows)
    if side:
        _copy_missing_meta(out_table, side.get("meta") or {})
    return Transfer(written=len(rows), files=[p])


def _copy_missing_meta(dst: LatencyTable, meta: Mapping[str, Any]) -> None:
    """Copy the meta entries `dst` lacks (a calibration, the per-call cost, the run settings);
    what `dst` has already is its own and stays."""
    have = dst.meta()
    for name, value in meta.items():
        if name not in have and name not in RESERVED_META:
            dst.meta_set(name, value)


def _read_csv_rows(p: str, profile_id: str) -> list[dict[str, Any]]:
    try:
        with open(p, newline="", encoding="utf-8") as f:
            records = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{p}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    except csv.Error as e:
        raise FormatError(f"{p}: not a CSV file: {e}") from None
    if not records:
        raise FormatError(f"{p}: empty file (a latbench CSV starts with a header: {','.join(COLUMNS)})")
    header = [h.strip() for h in records[0]]
    unknown = [h for h in header if h not in COLUMNS]
    missing = [c for c in ("key", "op", "estimate") if c not in header]
    if unknown or missing:
        raise FormatError(f"{p}:1: not a latbench table CSV ("
                          + (f"unknown column(s) {', '.join(unknown)}" if unknown else "")
                          + ("; " if unknown and missing else "")
                          + (f"missing column(s) {', '.join(missing)}" if missing else "") + ")")
    name = os.path.basename(p)
    out: dict[str, dict[str, Any]] = {}
    for lineno, rec in enumerate(records[1:], 2):
        if not any(x.strip() for x in rec):
            continue
        where = f"{p}:{lineno}"
        if len(rec) != len(header):
            raise FormatError(f"{where}: {len(rec)} fields, the header has {len(header)}")
        raw = dict(zip(header, rec))
        row: dict[str, Any] = {c: None for c in COLUMNS}
        for c, v in raw.items():
            row[c] = _csv_value(c, v, where)
        key = row["key"]
        if not key:
            raise FormatError(f"{where}: empty key")
        row["status"] = row["status"] or "ok"
        if row["status"] not in STATUSES:
            raise FormatError(f"{where}: status must be ok or failed, got {row['status']!r}")
        row["estimator"] = row["estimator"] or ("value" if "estimator" not in raw else None)
        if row["estimator"] is not None and row["estimator"] not in ESTIMATORS:
            raise FormatError(f"{where}: estimator must be one of {', '.join(ESTIMATORS)}, got {row['estimator']!r}")
        if row["status"] == "ok" and (row["estimate"] is None or row["estimate"] < 0):
            raise FormatError(f"{where}: an ok row of {key!r} needs a non-negative estimate")
        if row["profile_id"] and row["profile_id"] != profile_id:
            raise ProfileMismatchError(f"{where}: row {key!r} belongs to profile {row['profile_id']}, "
                                       f"the table's profile is {profile_id}")
        row["profile_id"] = profile_id
        try:
            op = _op_for(key, row["op"], where)
        except OpError as e:
            raise FormatError(str(e)) from None
        row["kind"] = row["kind"] or op.kind
        row["source"] = row["source"] or f"csv:{name}"
        row["error"] = row["error"] or ""
        for c in ("settings", "extra"):
            row[c] = row[c] if row[c] is not None else {}
            if not isinstance(row[c], dict):
                raise FormatError(f"{where}: column {c} must hold a JSON object")
        out[key] = row
    return list(out.values())


def _csv_value(c: str, v: str, where: str) -> Any:
    if v == "":
        return None
    try:
        if c in JSON_COLUMNS:
            return json.loads(v)
        if c in FLOAT_COLUMNS:
            return float(v)
        if c in INT_COLUMNS:
            return int(v)
    except ValueError:
        what = "JSON" if c in JSON_COLUMNS else ("a number" if c in FLOAT_COLUMNS else "an integer")
        shown = v if len(v) <= 60 else v[:57] + "..."
        raise FormatError(f"{where}: column {c}: {shown!r} is not {what}") from None
    return v


# ---------------------------------------------------------------------- PaddleSlim text
def export_paddleslim(table: LatencyTable, path: PathLike, skip_unsupported: bool = False) -> Transfer:
    """ok rows as PaddleSlim latency-table lines (op line + estimate in ms) for LightNAS tools."""
    # a row PaddleSlim has no line for (blocks, OFA layers, conv+BN) is an error naming its key,
    # or skipped and counted with skip_unsupported
    from .formats.paddleslim import op_to_line, write_table

    p = os.fspath(path)
    res = Transfer(not_ok=table.counts()["failed"], files=[p])
    rows: list[tuple[OpSpec, float]] = []
    for r in table.rows(status="ok"):
        op = OpSpec.from_dict(r["op"])
        try:
            op_to_line(op)
        except FormatError as e:
            if not skip_unsupported:
                raise FormatError(f"{table.path}: cannot export {r['key']} as PaddleSlim text: {e} "
                                  f"(--skip-unsupported leaves such rows out)") from None
            res.skipped.append(r["key"])
            continue
        rows.append((op, r["estimate"]))
    try:
        res.written = write_table(rows, p)
    except OSError as e:
        raise FormatError(f"{p}: cannot write: {e.strerror or e}") from None
    return res


def import_paddleslim(path: PathLike, table: LatencyTable, profile: DeviceProfile | None = None) -> Transfer:
    """A PaddleSlim latency table into `table` with estimator `value` and no invented statistics."""
    # a key listed twice keeps its last line
    from .formats.paddleslim import read_table as read_paddle

    p = os.fspath(path)
    prof = _use_profile(table, profile, p)
    rows = read_paddle(p)
    source = f"paddleslim:{os.path.basename(p)}"
    now = time.time()
    by_key: dict[str, dict[str, Any]] = {}
    for op, ms in rows:
        if not math.isfinite(ms) or ms < 0:
            raise FormatError(f"{p}: latency of {op.key} must be a finite number >= 0, got {ms!r}")
        m = Measurement(key=op.key, profile_id=prof.id, op=op.to_dict(), stats=None, taken_at=now)
        by_key[op.key] = table._measurement_row(m, source, "value", ms)
    table._put_rows(list(by_key.values()))
    return Transfer(written=len(by_key), files=[p])


# ---------------------------------------------------------------------- Once-for-All YAML
def _ofa_entry(row: dict[str, Any]) -> dict[str, Any]:
    mean = row["mean"] if row["mean"] is not None else row["estimate"]
    return {"count": row["n"], "mean": mean, "std": row["std"]}


def export_ofa_yaml(table: LatencyTable, out: PathLike, skip_unsupported: bool = False) -> Transfer:
    """ok rows with OFA keys as OFA LatencyTable YAML, so OFA's own tools can use the numbers."""
    # `out` a directory (existing, or not ending in .yaml/.yml): one {r}_lookup_table.yaml per
    # resolution in each row's extra["resolutions"]; `out` a file: every row in it. `mean` is the
    # row's mean, or its estimate when the source gave no mean; count and std only when known.
    from .formats.ofa import is_ofa_key, table_file_name, write_ofa_yaml

    o = os.fspath(out)
    to_dir = os.path.isdir(o) or not o.lower().endswith((".yaml", ".yml"))
    res = Transfer(not_ok=table.counts()["failed"])
    per_res: dict[int, dict[str, dict[str, Any]]] = {}
    flat: dict[str, dict[str, Any]] = {}
    for r in table.rows(status="ok"):
        key = r["key"]
        if not is_ofa_key(key):
            if not skip_unsupported:
                raise FormatError(f"{table.path}: {key} is not a Once-for-All block key, which OFA "
                                  f"YAML cannot hold (--skip-unsupported leaves such rows out)")
            res.skipped.append(key)
            continue
        entry = _ofa_entry(r)
        if not to_dir:
            flat[key] = entry
            continue
        resolutions = (r["extra"] or {}).get("resolutions") or []
        if not resolutions:
            if not skip_unsupported:
                raise FormatError(f"{table.path}: {key} has no resolutions recorded (extra "
                                  f"['resolutions']), so it belongs to no {{r}}_lookup_table.yaml; "
                                  f"export to one .yaml file instead, or --skip-unsupported")
            res.skipped.append(key)
            continue
        alt = (r["extra"] or {}).get("ofa_by_resolution") or {}
        for rr in resolutions:
            per_res.setdefault(int(rr), {})[key] = alt.get(str(rr), entry)
    try:
        if to_dir:
            os.makedirs(o, exist_ok=True)
            for rr in sorted(per_res):
                f = os.path.join(o, table_file_name(rr))
                write_ofa_yaml(per_res[rr], f)
                res.files.append(f)
            res.written = len({k for d in per_res.values() for k in d})
        else:
            res.written = write_ofa_yaml(flat, o)
            res.files.append(o)
    except OSError as e:
        raise FormatError(f"{o}: cannot write: {e.strerror or e}") from None
    return res


def import_ofa_yaml(paths: PathLike | Iterable[PathLike], table: LatencyTable,
                    profile: DeviceProfile | None = None) -> Transfer:
    """OFA LatencyTable YAML files into `table` with estimator `mean`, so lookups match OFA's own."""
    # count/std kept, median and IQR NULL. A {r}_lookup_table.yaml name records r in
    # extra["resolutions"]; a key in several files (or already imported from OFA YAML) keeps its
    # first numbers, gains the other resolutions, and keeps differing per-resolution numbers in
    # extra["ofa_by_resolution"] so a directory export gives each file back.
    from .formats.ofa import parse_ofa_key, read_ofa_yaml, resolution_of

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    prof = _use_profile(table, profile, ", ".join(paths))
    now = time.time()
    acc: dict[str, dict[str, Any]] = {}
    for p in paths:
        entries = read_ofa_yaml(p)
        r = resolution_of(p)
        source = f"ofa-yaml:{os.path.basename(p)}"
        for key, e in entries.items():
            try:
                op = parse_ofa_key(key)
            except FormatError as err:
                raise FormatError(f"{p}: {err}") from None
            if key not in acc:
                old = table.row(key)
                if old is not None and str(old["source"]).startswith("ofa-yaml:") and old["status"] == "ok":
                    acc[key] = old
                else:
                    stats = Stats(median=math.nan, p25=math.nan, p75=math.nan, min=math.nan,
                                  max=math.nan, mean=e["mean"], std=_nan(e["std"]),
                                  n=e["count"] or 0, block=0)
                    m = Measurement(key=key, profile_id=prof.id, op=op.to_dict(), stats=stats,
                                    taken_at=now, extra={})
                    acc[key] = table._measurement_row(m, source, "mean", e["mean"])
            row = acc[key]
            if r is None:
                continue
            extra = row["extra"]
            rs = set(extra.get("resolutions") or [])
            first = not rs and not extra.get("ofa_by_resolution")
            rs.add(r)
            extra["resolutions"] = sorted(rs)
            if not first:
                main = {"count": row["n"], "mean": row["mean"], "std": row["std"]}
                if e != main:
                    extra.setdefault("ofa_by_resolution", {})[str(r)] = e
    table._put_rows(list(acc.values()))
    return Transfer(written=len(acc), files=paths)


# ---------------------------------------------------------------------- merge
def merge(dst: LatencyTable, srcs: Iterable[LatencyTable | PathLike], force: bool = False) -> Transfer:
    """Copy every row of `srcs` into `dst`, refusing other device profiles unless `force` and rows
    timed in another granularity or cache context always; from sources of its own profile, the
    per-call costs are pooled and the meta entries `dst` lacks (per-call cost, run settings,
    calibration) copied, so a merged table prices subnets as its sources do."""
    # a later source replaces a key, but a failed row never replaces an ok one; with force, dst
    # keeps its profile and each copied row records its source profile id in extra["source_profile"]
    res = Transfer()
    for src in srcs:
        own = not isinstance(src, LatencyTable)
        s = LatencyTable.open(src, create=False) if own else src
        try:
            if os.path.realpath(s.path) == os.path.realpath(dst.path):
                raise UsageError(f"cannot merge {s.path} into itself")
            res.files.append(s.path)
            if s.profile is None:
                if len(s):
                    raise FormatError(f"{s.path}: rows without a device profile")
                continue
            if dst.profile is None:
                dst.set_profile(s.profile)
            foreign = s.profile.id != dst.profile.id  # type: ignore[union-attr]
            if foreign and not force:
                raise ProfileMismatchError(
                    _mismatch_message(f"cannot merge {s.path} into {dst.path}", dst.profile, s.profile)  # type: ignore[arg-type]
                    + "; --force merges anyway, recording each row's source profile")
            # refuses rows timed otherwise before any is copied; pools one device's per-call costs
            merge_run_meta(dst, s.meta(), s.path, same_device=not foreign)
            dst_ok = dst.keys("ok")
            rows = []
            for r in s.rows():
                if r["status"] != "ok" and r["key"] in dst_ok:
                    continue
                if foreign:
                    r["extra"] = {**(r["extra"] or {}), "source_profile": (r["extra"] or {}).get(
                        "source_profile", r["profile_id"])}
                    r["profile_id"] = dst.profile.id  # type: ignore[union-attr]
                rows.append(r)
            dst._put_rows(rows)
            if foreign:
                merged = dst.meta_get("merged_profiles", {}) or {}
                merged[s.profile.id] = s.profile.to_dict()
                dst.meta_set("merged_profiles", merged)
            else:  # e.g. the per-call cost and the run settings the rows were priced and taken with
                _copy_missing_meta(dst, s.meta())
            res.written += len(rows)
        finally:
            if own:
                s.close()
    return res


__all__ = [
    "LatencyTable", "ProfileMismatchError", "KeyNotFoundError", "Transfer", "COLUMNS", "ESTIMATORS",
    "read_table", "row_to_measurement", "import_profile", "export_csv", "import_csv", "csv_meta_path",
    "export_paddleslim", "import_paddleslim", "export_ofa_yaml", "import_ofa_yaml", "merge",
]
