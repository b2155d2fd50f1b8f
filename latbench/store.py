"""The latency table: an SQLite file that is latbench's store of record (exports and imports live
in latbench.formats, merge and combine in latbench.merge and latbench.combine, all through this
module's public API).

One row per op key, holding everything a Measurement carries (statistics, raw samples, settings,
extra facts such as temperatures or the resolutions an op belongs to) and the number used for
prediction with the estimator it came from: `mean` (of every sample) for our own measurements
(`median` or `round_min`, the fastest round's median, where a profile asked for them or before
the mean was the default), for rows imported from Once-for-All YAML and for benchmark_model runs,
`value` for PaddleSlim text, which has no statistics. Every raw sample is kept, so a price by
another statistic can be asked for (`statistic_values`). A spread that the source did not give
stays NULL; nothing is invented. No pickle anywhere: JSON and SQL.

Durability: WAL journal, `synchronous=NORMAL`, one transaction per `add`. In WAL mode a commit is
complete once its frames are written to the -wal file, which lives in the OS page cache and so
survives the death of the process (SIGKILL, Ctrl-C, OOM kill, the CLI's interrupt watchdog
ending a process stuck in a native call), and a commit cut short is rolled back whole: a killed
profile loses only what the agent had not handed over (the batch in flight). NORMAL skips the fsync per commit that FULL adds; what it risks is only the
last commits on a power loss or kernel crash, never corruption (WAL replays whole transactions),
and those ops are simply re-measured on resume. FULL would cost an fsync per op (tens of ms on
phone-attached laptops and SD cards) and slow bulk imports, for no gain against process death.

One device profile per table: stored on first use; opening or setting another one raises
ProfileMismatchError naming both profiles and the fields that differ.

Reading (`open(..., readonly=True)`) never writes and never creates a file, so a table can be read
from a read-only directory or by another user: a table whose last writer closed cleanly (no -wal
file) is read as `immutable` (no -shm needed), a table with a live or killed writer's -wal through
that writer's -shm (`mode=ro`), so committed log frames are never skipped; a -wal without its
-shm is refused in one line. A table that cannot be written, a damaged file and an estimate that
is not a finite number >= 0 (written by another tool) are one-line TableErrors naming the file.

Metadata is typed (latbench.tablemeta): `run_settings`, `invocation`, `reference`,
`calibration(space, granularity)` and `timing` read it, `set_*` write it; `meta_get`/`meta_set`
read and write the same JSON. The format version (meta "version") is the schema version: 2 since
typed metadata. A table written by an older latbench (version 1) is upgraded when opened
(`tablemeta.migrate_meta`): in place, in one transaction, when opened for writing; read through
the migration, writing nothing, when opened read-only. A newer version is refused.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, Union

from .device import DeviceProfile
from .errors import FormatError, LatbenchError, OpError, TableError, UsageError
from .measure import Measurement, Stats, TimingSettings
from .ops import OpSpec
from .tablemeta import (CALIBRATION_META, INVOCATION_META, REFERENCE_META, RUN_META, CalibrationEntry,
                        CompanionEntry, RunSettings, calibration_key, migrate_meta)

if TYPE_CHECKING:  # pragma: no cover
    import pandas

PathLike = Union[str, "os.PathLike[str]"]

FORMAT_NAME = "latbench-table"
FORMAT_VERSION = 2  # the schema version; 1: before typed metadata (migrated on open)
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


def column_json(obj: Any) -> str:
    """A JSON column's text as the store writes it (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def op_for_row(key: str, op_dict: Any, where: str) -> OpSpec:
    """Rebuild the op of a row (its op JSON) and check it is the op its key names; `where` (file,
    line) starts the message of a FormatError or OpError."""
    if not isinstance(op_dict, dict):
        raise FormatError(f"{where}: op of {key!r} must be a JSON object, got {op_dict!r}")
    try:
        op = OpSpec.from_dict(op_dict)
    except (LatbenchError, TypeError, ValueError) as e:
        raise FormatError(f"{where}: op of {key!r} cannot be rebuilt: {e}") from None
    if op.key != key:
        raise OpError(f"{where}: key {key!r} does not match its op, whose key is {op.key!r}")
    return op


# ---------------------------------------------------------------------- opening a file
def sql_error(path: str, e: sqlite3.Error, doing: str = "read") -> LatbenchError:
    """One line naming the table file for an SQLite error met while `doing` (open, read, write)."""
    name = getattr(e, "sqlite_errorname", "")
    if name.startswith("SQLITE_CORRUPT"):
        return damaged(path, str(e))
    if name.startswith("SQLITE_NOTADB"):
        return FormatError(f"{path} is not a latbench table ({e})")
    return TableError(f"{path}: cannot {doing} the table ({e})")


def damaged(path: str, why: str) -> TableError:
    """One line for a table file SQLite finds damaged."""
    return TableError(f"{path}: the table file is damaged ({' '.join(why.split())}); "
                      f"`sqlite3 {path} .recover` saves what can be saved")


def _check_file(p: str, create: bool) -> None:
    """Refuse a directory, a missing table (unless `create`) and a file that is not SQLite."""
    if os.path.isdir(p):
        raise FormatError(f"{p} is not a latbench table (it is a directory)")
    size = os.path.getsize(p) if os.path.exists(p) else -1
    has_wal = os.path.exists(p + "-wal") and os.path.getsize(p + "-wal") > 0
    if size <= 0 and not has_wal:
        if not create:
            raise FormatError(f"{p}: no such latbench table" + (" (empty file)" if size == 0 else ""))
        return
    if size > 0:
        try:
            with open(p, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as e:
            raise TableError(f"{p}: cannot read: {e.strerror or e}") from None
        if head != SQLITE_MAGIC:
            raise FormatError(f"{p} is not a latbench table (not an SQLite database)")


def _check_writable(p: str) -> None:
    """A table opened for writing needs the file and its directory (where SQLite keeps FILE-wal
    and FILE-shm) writable: say which is not, and why, before SQLite fails without a name."""
    d = os.path.dirname(os.path.abspath(p))
    why = ""
    if not os.path.isdir(d):
        why = f"no such directory {d}"
    elif os.path.exists(p):
        try:
            os.close(os.open(p, os.O_RDWR))
        except OSError as e:
            why = f"the file cannot be written ({e.strerror or e})"
    if not why and not os.access(d, os.W_OK | os.X_OK):
        why = (f"its directory {d} is on a read-only file system" if os.statvfs(d).f_flag & os.ST_RDONLY
               else f"its directory {d} is not writable (SQLite keeps FILE-wal and FILE-shm beside it)")
    if why:  # an existing table can still be read where it cannot be written: say how
        hint = ("; reading commands (table show, table export, predict, search) open it read-only"
                if os.path.exists(p) else "")
        raise TableError(f"{p}: cannot write the table: {why}{hint}")


def _file_stamp(p: str) -> tuple:
    """What changes when a file is written: inode, size, modification time (empty: gone)."""
    try:
        st = os.stat(p)
    except OSError:
        return ()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _readonly_uri(p: str) -> tuple[str, tuple | None]:
    """An SQLite URI that reads `p` without writing or creating any file, committed log included;
    and, for an immutable read, the file's stat (a writer that starts meanwhile changes it)."""
    wal, shm = p + "-wal", p + "-shm"
    wal_bytes = os.path.getsize(wal) if os.path.exists(wal) else -1
    journal = os.path.exists(p + "-journal") and os.path.getsize(p + "-journal") > 0
    uri = f"file:{urllib.parse.quote(os.path.abspath(p))}?"
    if (os.path.exists(shm) and wal_bytes >= 0) or journal:
        return uri + "mode=ro", None  # a live (or killed) writer's log, read through its index
    if wal_bytes <= 0:  # the last writer closed cleanly: no log to read, nothing to lock
        return uri + "immutable=1", _file_stamp(p)
    raise TableError(f"{p}: its write-ahead log {wal} holds commits but {shm} is missing, so "
                     f"reading it would create files; where the file can be written, run "
                     f"`sqlite3 {p} 'PRAGMA wal_checkpoint(TRUNCATE)'` (or any latbench "
                     f"command that writes the table) to fold the log in")


def _create_schema(conn: sqlite3.Connection) -> None:
    """Create the meta and measurements tables of a new table file (WAL journal)."""
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


def _migrate(p: str, conn: sqlite3.Connection, version: int, readonly: bool) -> dict[str, Any]:
    """Upgrade a table of format `version` to FORMAT_VERSION: writable, in place in one transaction
    (meta read again inside it, so a concurrent writer's entries are never overwritten) and {}
    returned; read-only, nothing written and the migrated meta entries returned."""
    if readonly:
        return migrate_meta(_stored_meta(p, conn), version)
    conn.execute("BEGIN IMMEDIATE")
    try:
        meta = _stored_meta(p, conn)
        now = meta.get("version")
        if isinstance(now, int) and now < FORMAT_VERSION:
            changed = {**migrate_meta(meta, now), "version": FORMAT_VERSION}
            conn.executemany("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)",
                             [(k, json.dumps(v, sort_keys=True)) for k, v in changed.items()])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return {}


def _stored_meta(p: str, conn: sqlite3.Connection) -> dict[str, Any]:
    """Every meta entry, JSON decoded; one that is not JSON is a one-line TableError."""
    out = {}
    for name, value in conn.execute("SELECT name, value FROM meta"):
        try:
            out[name] = json.loads(value)
        except (TypeError, ValueError) as e:
            raise TableError(f"{p}: meta {name!r} is not JSON ({e})") from None
    return out


# ---------------------------------------------------------------------- the table
class LatencyTable:
    """One device profile's latency table in an SQLite file; see the module docstring."""

    def __init__(self, path: str, conn: sqlite3.Connection, profile: DeviceProfile | None,
                 readonly: bool = False, snapshot: tuple | None = None,
                 migrated: dict[str, Any] | None = None):
        self.path = path
        self._conn = conn
        self._profile = profile
        self.readonly = readonly
        self._snapshot = snapshot  # the file's stat when read as immutable: a change ends the read
        self._migrated = migrated or {}  # read-only open of an older table: meta as migrated
        self._id_of: tuple[DeviceProfile | None, str] = (None, "")  # (profile, its id)

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: PathLike, profile: DeviceProfile | None = None, *,
             create: bool = True, readonly: bool = False) -> "LatencyTable":
        """Open (or create) the table at `path`; with `profile`, check or store it. `readonly`
        opens an existing table for reading only: no write access needed, no file created."""
        p = os.fspath(path)
        _check_file(p, create and not readonly)
        if not readonly:
            _check_writable(p)
        uri, snapshot = _readonly_uri(p) if readonly else (p, None)
        try:
            conn = sqlite3.connect(uri, uri=readonly, timeout=30.0, isolation_level=None)
        except sqlite3.Error as e:
            raise TableError(f"{p}: cannot open: {e}") from None
        try:
            stored, migrated = cls._prepare(p, conn, readonly)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise sql_error(p, e, "open") from None
        except BaseException:
            conn.close()
            raise
        table = cls(p, conn, stored, readonly, snapshot, migrated)
        if profile is not None:
            try:
                table.set_profile(profile)
            except BaseException:
                table.close()
                raise
        return table

    @staticmethod
    def _prepare(p: str, conn: sqlite3.Connection,
                 readonly: bool = False) -> tuple[DeviceProfile | None, dict[str, Any]]:
        """Check (or, writable, create) the schema and upgrade an older one (see the module
        docstring); return the stored profile and, read-only, the meta entries as migrated."""
        conn.execute("PRAGMA busy_timeout = 30000")
        if readonly:
            conn.execute("PRAGMA query_only = 1")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "meta" not in tables:
            others = sorted(t for t in tables if not t.startswith("sqlite_"))
            if others:
                raise FormatError(f"{p} is not a latbench table (an SQLite database without "
                                  f"latbench's meta table; it holds: {', '.join(others[:8])})")
            if readonly:
                raise FormatError(f"{p}: no such latbench table (an empty SQLite database)")
            _create_schema(conn)
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
        problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]  # every page, ~2 ms a MB
        if problem != "ok":
            raise damaged(p, problem.replace("*** in database main ***", ""))
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        migrated = _migrate(p, conn, version, readonly) if version < FORMAT_VERSION else {}
        if "profile" in rows:
            try:
                return DeviceProfile.from_dict(json.loads(rows["profile"])), migrated
            except (ValueError, TypeError) as e:
                raise FormatError(f"{p}: stored device profile is unreadable: {e}") from None
        return None, migrated

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

    def _tx(self) -> "_Transaction":
        if self.readonly:
            raise TableError(f"{self.path}: opened read-only; open it without readonly to write")
        return _Transaction(self.conn, self.path)

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        """Every row of one SELECT; an SQLite error (a damaged file, say) is one line naming the file."""
        try:
            rows = self.conn.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            self._check_snapshot()  # a writer meanwhile explains the error
            raise sql_error(self.path, e) from None
        self._check_snapshot()
        return rows

    def _check_snapshot(self) -> None:
        """An immutable read is only as good as the file staying unchanged: say so if it moved."""
        if self._snapshot is not None and _file_stamp(self.path) != self._snapshot:
            raise TableError(f"{self.path}: the table was written while it was being read; run the "
                             f"command again")

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
                              (column_json(profile.to_dict()),))
        self._profile = profile

    def _profile_id(self) -> str:
        """The profile's id, hashed once per profile (bulk imports ask for it per row)."""
        prof = self.require_profile()
        if self._id_of[0] is not prof:
            self._id_of = (prof, prof.id)
        return self._id_of[1]

    def require_profile(self) -> DeviceProfile:
        if self._profile is None:
            raise UsageError(f"{self.path}: the table has no device profile yet; open it with a "
                             f"profile or call set_profile first")
        return self._profile

    def meta_get(self, name: str, default: Any = None) -> Any:
        """A JSON value stored under `name` (e.g. a calibration), or `default`."""
        if name in self._migrated:
            return self._migrated[name]
        rows = self._query("SELECT value FROM meta WHERE name = ?", (name,))
        return default if not rows else json.loads(rows[0][0])

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
        for name, value in self._query("SELECT name, value FROM meta ORDER BY name"):
            if name not in RESERVED_META:
                out[name] = self._migrated.get(name, json.loads(value))
        return out

    # ------------------------------------------------------------------ typed meta (latbench.tablemeta)
    def _typed(self, cls: Any, name: str) -> Any:
        d = self.meta_get(name)
        return None if d is None else cls.from_dict(d, f"{self.path}: meta {name}")

    @property
    def run_settings(self) -> RunSettings | None:
        """How a profile timed the rows (meta "profile_run"); None when none did (an import)."""
        return self._typed(RunSettings, RUN_META)

    def set_run_settings(self, run: RunSettings) -> None:
        """Record how the rows are timed (latbench.runmeta.check_run_meta checks a run against it)."""
        self.meta_set(RUN_META, run.to_dict())

    @property
    def invocation(self) -> CompanionEntry | None:
        """The runtime's per-call cost (meta "invocation"), or None where none was measured."""
        return self._typed(CompanionEntry, INVOCATION_META)

    def set_invocation(self, entry: CompanionEntry) -> None:
        self.meta_set(INVOCATION_META, entry.to_dict())

    @property
    def reference(self) -> CompanionEntry | None:
        """The reference kernel timed in every batch (meta "reference"), or None."""
        return self._typed(CompanionEntry, REFERENCE_META)

    def set_reference(self, entry: CompanionEntry) -> None:
        self.meta_set(REFERENCE_META, entry.to_dict())

    def calibrations(self) -> dict[str, CalibrationEntry]:
        """Every stored calibration by its key "SPACE/GRANULARITY"."""
        cals = self.meta_get(CALIBRATION_META) or {}
        if not isinstance(cals, dict):
            raise TableError(f"{self.path}: meta {CALIBRATION_META} must be a JSON object")
        return {k: CalibrationEntry.from_dict(v, f"{self.path}: meta {CALIBRATION_META} {k}")
                for k, v in cals.items()}

    def calibration(self, space: Any, granularity: str) -> CalibrationEntry | None:
        """The calibration of `space` (a name or a space) at `granularity`, or None."""
        return self.calibrations().get(calibration_key(space, granularity))

    def set_calibration(self, entry: CalibrationEntry) -> None:
        """Store `entry` under its key (the other spaces' calibrations kept), in one transaction."""
        with self._tx():
            cals = dict(self.meta_get(CALIBRATION_META) or {})
            cals[entry.key] = entry.to_dict()
            self.conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES (?, ?)",
                              (CALIBRATION_META, json.dumps(cals, sort_keys=True)))

    @property
    def timing(self) -> TimingSettings | None:
        """The timing settings most ok rows were measured with (ties: the first stored), or None
        where no row records one (an imported table)."""
        recs = self._query(
            "SELECT json_extract(settings, '$.timing') AS t, COUNT(*) AS c FROM measurements "
            "WHERE status = 'ok' AND json_type(settings, '$.timing') = 'object' "
            "GROUP BY t ORDER BY c DESC, MIN(rowid) LIMIT 1")
        if not recs:
            return None
        try:
            return TimingSettings.from_dict(json.loads(recs[0][0]))
        except (LatbenchError, TypeError, ValueError) as e:
            raise TableError(f"{self.path}: the rows' timing settings cannot be read ({e})") from None

    # ------------------------------------------------------------------ writing
    def add(self, m: Measurement, *, source: str = "measured", estimator: str = "median",
            estimate: float | None = None) -> None:
        """Store one measurement in its own transaction (a re-added key replaces the old row)."""
        row = self.measurement_row(m, source, estimator, estimate)
        with self._tx():
            self._insert(row)

    def add_many(self, measurements: Iterable[Measurement], *, source: str = "measured",
                 estimator: str = "median") -> int:
        """Store many measurements in one transaction (imports); returns how many."""
        rows = [self.measurement_row(m, source, estimator, None) for m in measurements]
        self.put_rows(rows)
        return len(rows)

    def put_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store rows as `rows()` gives them (another table's, or ones `measurement_row` or
        latbench.formats checked) in one transaction; a key already stored is replaced."""
        with self._tx():
            for row in rows:
                self._insert(row)

    def _insert(self, row: dict[str, Any]) -> None:
        cols = ", ".join(COLUMNS)
        marks = ", ".join("?" for _ in COLUMNS)
        self.conn.execute(f"INSERT OR REPLACE INTO measurements ({cols}) VALUES ({marks})",
                          [_to_sql(c, row.get(c)) for c in COLUMNS])

    def measurement_row(self, m: Measurement, source: str, estimator: str,
                        estimate: float | None) -> dict[str, Any]:
        """The row `add` would store for `m` (checked against the table's profile; `estimate`
        None: the statistic `estimator` of its stats), for callers that store many at once."""
        prof = self.require_profile()
        pid = self._profile_id()
        if m.profile_id and m.profile_id != pid:
            raise ProfileMismatchError(
                f"{self.path}: the measurement of {m.key} was taken under profile {m.profile_id}, "
                f"the table's profile is {prof.describe()}")
        if m.status not in STATUSES:
            raise UsageError(f"{m.key}: status must be ok or failed, got {m.status!r}")
        if estimator not in ESTIMATORS:
            raise UsageError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
        op_for_row(m.key, m.op, self.path)
        s = m.stats
        row: dict[str, Any] = {
            "key": m.key, "kind": m.op.get("kind", ""), "status": m.status, "error": m.error or "",
            "estimator": estimator, "estimate": None, "wall_s": m.wall_s, "timed_s": m.timed_s,
            "taken_at": m.taken_at, "source": source, "profile_id": pid, "op": m.op,
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

    def merge_extra_lists(self, name: str, items: dict[str, Sequence[Any]]) -> int:
        """Add `items[key]` to the JSON list extra[name] of each stored row `key` (sorted, each item
        once), in one transaction: a resumed profile's stored keys are used at its resolutions too.
        Returns how many rows changed."""
        changed = 0
        with self._tx():
            for key, values in items.items():
                recs = self.conn.execute("SELECT extra FROM measurements WHERE key = ?", (key,)).fetchall()
                if not recs:
                    continue
                extra = json.loads(recs[0][0]) if recs[0][0] else {}
                merged = sorted(set(extra.get(name) or ()) | set(values))
                if merged != extra.get(name):
                    extra[name] = merged
                    self.conn.execute("UPDATE measurements SET extra = ? WHERE key = ?", (_to_sql("extra", extra), key))
                    changed += 1
        return changed

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self._query("SELECT COUNT(*) FROM measurements")[0][0]

    def __contains__(self, key: object) -> bool:
        """True when `key` has a row of any status (use `keys()` for ok rows)."""
        return bool(self._query("SELECT 1 FROM measurements WHERE key = ?", (key,)))

    def counts(self) -> dict[str, int]:
        """Rows per status: {"ok": n, "failed": m}."""
        out = {s: 0 for s in STATUSES}
        for status, n in self._query("SELECT status, COUNT(*) FROM measurements GROUP BY status"):
            out[status] = n
        return out

    def keys(self, status: str | None = "ok") -> set[str]:
        """Keys with rows of `status` (None: every row)."""
        if status is None:
            return {r[0] for r in self._query("SELECT key FROM measurements")}
        return {r[0] for r in self._query("SELECT key FROM measurements WHERE status = ?", (status,))}

    def rows(self, status: str | None = None, kind: str | None = None, *,
             columns: Sequence[str] = COLUMNS, extra_keys: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
        """Each row's `columns` (every stored one by default; key always; JSON decoded), ordered by
        key; of `status`, `kind`, and with `extra_keys`: rows whose extra holds one of them."""
        cols = ("key",) + tuple(c for c in columns if c != "key")
        unknown = [c for c in cols if c not in COLUMNS]
        if unknown:
            raise UsageError(f"unknown column(s) {', '.join(unknown)} (columns: {', '.join(COLUMNS)})")
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if extra_keys is not None:
            paths = [_json_path(k) for k in extra_keys]
            where.append("(" + (" OR ".join("json_type(extra, ?) IS NOT NULL" for _ in paths) or "0") + ")")
            args.extend(paths)
        sql = f"SELECT {', '.join(cols)} FROM measurements"
        if where:
            sql += " WHERE " + " AND ".join(where)
        for rec in self._query(sql + " ORDER BY key", args):
            yield _from_sql(rec, self.path, cols)

    def extra_values(self, name: str, status: str | None = "ok") -> set[Any]:
        """Every distinct item of the JSON lists that rows of `status` (None: all) keep in
        extra[name] (e.g. "resolutions": the input resolutions their keys belong to)."""
        sql = "SELECT DISTINCT r.value FROM measurements, json_each(measurements.extra, ?) AS r"
        args: list[Any] = [_json_path(name)]
        if status is not None:
            sql += " WHERE measurements.status = ?"
            args.append(status)
        return {v for (v,) in self._query(sql, args)}

    def row(self, key: str) -> dict[str, Any] | None:
        """Every stored column of one row, or None."""
        recs = self._query(f"SELECT {', '.join(COLUMNS)} FROM measurements WHERE key = ?", (key,))
        return _from_sql(recs[0], self.path) if recs else None

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
        recs = self._query("SELECT status, estimate, error FROM measurements WHERE key = ?", (key,))
        if not recs:
            raise KeyNotFoundError(f"{key} is not in {self.path}")
        if recs[0][0] != "ok":
            raise KeyNotFoundError(f"{key} failed in {self.path}: {recs[0][2]}")
        return self._price(key, recs[0][1])

    def estimates(self) -> dict[str, float]:
        """key -> estimate (ms) of every ok row."""
        return {k: self._price(k, v) for k, v in
                self._query("SELECT key, estimate FROM measurements WHERE status = 'ok'")}

    def estimators(self) -> dict[str, int]:
        """How many ok rows each estimator prices ({"mean": 96}; an imported table: "value" ...)."""
        return dict(self._query("SELECT estimator, COUNT(*) FROM measurements WHERE status = 'ok' "
                                "GROUP BY estimator ORDER BY estimator"))

    def statistic_values(self, statistic: str) -> dict[str, float | None]:
        """key -> the `statistic` column (median, mean or min; ms) of every ok row, None where the
        row does not hold it (PaddleSlim text holds a value only, benchmark_model no median)."""
        if statistic not in ("median", "mean", "min"):
            raise UsageError(f"statistic must be median, mean or min, got {statistic!r}")
        return {k: None if v is None else self._price(k, v) for k, v in
                self._query(f"SELECT key, {statistic} FROM measurements WHERE status = 'ok'")}

    def _price(self, key: str, v: Any) -> float:
        """A stored estimate as a price: a finite number >= 0, else one line naming file and key
        (this latbench never writes another; an older one or another tool may have)."""
        if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0:
            return float(v)
        raise TableError(f"{self.path}: key {key!r} has estimate {v!r}; a price must be a finite "
                         f"number of ms >= 0 (a row written by another tool or an older latbench?)")

    def ops(self, status: str | None = "ok") -> list[OpSpec]:
        """The OpSpecs of the rows of `status` (None: all), rebuilt from their stored op JSON."""
        sql = "SELECT op FROM measurements" + (" WHERE status = ?" if status else "") + " ORDER BY key"
        return [OpSpec.from_dict(json.loads(r[0])) for r in self._query(sql, (status,) if status else ())]

    def to_frame(self) -> "pandas.DataFrame":
        """Every row and column as a DataFrame (JSON columns as text), ordered by key."""
        import pandas as pd

        try:
            frame = pd.read_sql_query(f"SELECT {', '.join(COLUMNS)} FROM measurements ORDER BY key",
                                      self.conn)
        except pd.errors.DatabaseError as e:
            if isinstance(e.__cause__, sqlite3.Error):
                self._check_snapshot()
                raise sql_error(self.path, e.__cause__) from None
            raise
        self._check_snapshot()
        return frame

    def backup(self, path: PathLike) -> None:
        """Copy the table as it is now into the file `path` (SQLite's online backup: one consistent
        snapshot, while a writer may go on); an existing file there is overwritten."""
        p = os.fspath(path)
        try:
            dst = sqlite3.connect(p)
            try:
                self.conn.backup(dst)
            finally:
                dst.close()
        except sqlite3.Error as e:
            raise sql_error(p, e, "write") from None

    def snapshot_bytes(self) -> bytes:
        """The table as it is now as one file's bytes (`backup` into a scratch file): what a farm
        sends the host that validates it."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="latbench-snapshot-") as d:
            path = os.path.join(d, "table.sqlite")
            self.backup(path)
            with open(path, "rb") as f:
                return f.read()

    def integrity_check(self) -> str:
        """SQLite's own check: 'ok' when the file is sound."""
        return self._query("PRAGMA integrity_check")[0][0]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception; an SQLite error (read-only file,
    full disk, a constraint) becomes one line naming the table file."""

    def __init__(self, conn: sqlite3.Connection, path: str):
        self.conn = conn
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise sql_error(self.path, e, "write") from None
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
            except sqlite3.Error as e:
                raise sql_error(self.path, e, "write") from None
            return
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise sql_error(self.path, exc, "write") from None


def _to_sql(col: str, v: Any) -> Any:
    if col in JSON_COLUMNS:
        return None if v is None else column_json(v)
    if col in FLOAT_COLUMNS:
        return _finite(v)
    if col in INT_COLUMNS:
        return None if v is None else int(v)
    return v


def _json_path(name: str) -> str:
    """The SQLite JSON path of the top-level member `name`."""
    return '$."' + name.replace('"', '""') + '"'


def _from_sql(rec: Sequence[Any], path: str, columns: Sequence[str] = COLUMNS) -> dict[str, Any]:
    """A stored row (of `columns`) as a dict, JSON decoded; a value of the wrong type (a row
    another tool wrote) is one line naming the file, the key and the column."""
    row = dict(zip(columns, rec))
    for c in FLOAT_COLUMNS + INT_COLUMNS:
        if row.get(c) is not None and not isinstance(row[c], (int, float)):
            raise TableError(f"{path}: key {row['key']!r}: {c} holds {row[c]!r}, not a number")
    for c in JSON_COLUMNS:
        if row.get(c) is not None:
            try:
                row[c] = json.loads(row[c])
            except (TypeError, ValueError) as e:
                raise TableError(f"{path}: key {row['key']!r}: {c} is not JSON ({e})") from None
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
    with LatencyTable.open(path, readonly=True) as t:
        return t.to_frame()



__all__ = ["LatencyTable", "ProfileMismatchError", "KeyNotFoundError", "COLUMNS", "ESTIMATORS", "FORMAT_VERSION",
           "read_table", "row_to_measurement", "mismatch_message", "op_for_row", "column_json", "RunSettings",
           "CompanionEntry", "CalibrationEntry", "calibration_key"]
