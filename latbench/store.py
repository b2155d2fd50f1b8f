"""The latency table: an SQLite file that is latbench's store of record (exports, imports and
merge live in latbench.tableio).

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

import json
import math
import os
import sqlite3
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, Union

from .device import DeviceProfile
from .errors import FormatError, LatbenchError, OpError, UsageError
from .measure import Measurement, Stats
from .ops import OpSpec

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


def mismatch_message(what: str, have: DeviceProfile, other: DeviceProfile) -> str:
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
                raise ProfileMismatchError(mismatch_message(self.path, self._profile, profile))
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



__all__ = ["LatencyTable", "ProfileMismatchError", "KeyNotFoundError", "COLUMNS", "ESTIMATORS",
           "read_table", "row_to_measurement", "mismatch_message"]
