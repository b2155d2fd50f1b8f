"""What every table import and export shares: the Transfer report, the profile of foreign numbers,
and the copying of meta entries a table is priced with."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..device import DeviceProfile
from ..errors import UsageError
from ..store import RESERVED_META, LatencyTable


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


def use_profile(table: LatencyTable, profile: DeviceProfile | None, what: str) -> DeviceProfile:
    if profile is not None:
        table.set_profile(profile)
    if table.profile is None:
        raise UsageError(f"importing {what} into {table.path} needs a device profile: the table has "
                         f"none yet (pass --device NAME, or import_profile(...))")
    return table.profile



def copy_missing_meta(dst: LatencyTable, meta: Mapping[str, Any]) -> None:
    """Copy the meta entries `dst` lacks (a calibration, the per-call cost, the run settings);
    what `dst` has already is its own and stays."""
    have = dst.meta()
    for name, value in meta.items():
        if name not in have and name not in RESERVED_META:
            dst.meta_set(name, value)
