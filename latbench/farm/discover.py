"""What a host offers the farm: its devices as DeviceEntry (an agent spec each) and the Ray custom
resources that advertise them, so work for a device lands on the host that holds it."""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import DeviceUnavailableError, LatbenchError, UsageError

from . import RESOURCE_PREFIX

LOCAL_KINDS = ("ort", "tflite", "cpu", "cuda")  # runtimes on the host itself
HOST_CPU_KINDS = ("ort", "tflite", "cpu")  # they time on the host's cores: one at a time per host


@dataclass(frozen=True)
class DeviceEntry:
    """One device of one host: its id in the farm, the agent kind, the host (node name) and the
    agent spec that builds it there (`device_agents.agent_from_profile`)."""

    device_id: str
    kind: str
    node: str
    spec: dict[str, Any] = field(hash=False)

    @property
    def resource(self) -> str:
        """The Ray custom resource its node advertises for it (one unit)."""
        return RESOURCE_PREFIX + self.device_id

    @property
    def host_cpu(self) -> bool:
        """Whether it times on the host's own cores (then the host's such devices take turns)."""
        return self.kind in HOST_CPU_KINDS

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "kind": self.kind, "node": self.node, "spec": self.spec}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DeviceEntry":
        return cls(d["device_id"], d["kind"], d["node"], dict(d["spec"]))


def node_name(name: str | None = None) -> str:
    """A node's name in the farm: `name`, else this host's name; letters, digits and -_. only."""
    name = (name or socket.gethostname() or "host").strip()
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
        raise UsageError(f"node name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def local_entry(kind: str, node: str, options: Mapping[str, Any] | None = None) -> DeviceEntry:
    """The host runtime `kind` (ort, tflite, cpu, cuda) as a device of `node`, checked by building
    its agent once (a runtime that is not installed, or no GPU, is refused in one line)."""
    from device_agents import get_agent

    if kind not in LOCAL_KINDS:
        raise UsageError(f"device kind {kind!r}: a host offers {', '.join(LOCAL_KINDS)} (phones are found on its adb server)")
    agent = get_agent(kind, **dict(options or {}))
    try:
        agent.profile  # noqa: B018 - fingerprinting fails where the runtime cannot run here
        spec = agent.to_spec()
    finally:
        agent.close()
    return DeviceEntry(f"{kind}@{node}", kind, node, spec)


def phone_entries(node: str, runner: str | None, adb_host: str | None = None, adb_port: int | None = None,
                  options: Mapping[str, Any] | None = None) -> tuple[list[DeviceEntry], list[str]]:
    """The phones ready on this host's adb server as devices of `node` (each with the runner to
    push), and a line for each one left out (not ready) or for the server not answering."""
    from device_agents.android import adb_client, list_devices

    try:
        client = adb_client(adb_host, adb_port, timeout=10.0)
        found = list_devices(client)
    except DeviceUnavailableError as e:
        return [], [f"no phones: {e}"]
    notes = [f"phone {d['serial']} left out: it is {d['state']}" for d in found if d["state"] != "device"]
    ready = [d["serial"] for d in found if d["state"] == "device"]
    if ready and not runner:
        return [], [f"phones {', '.join(ready)} left out: give the benchmark runner to push (`runner`)"]
    out = []
    for serial in ready:
        opts = {**dict(options or {}), "serial": serial, "runner": runner, "adb_host": client.host, "adb_port": client.port}
        out.append(DeviceEntry(f"android:{serial}", "android", node, {"agent": "android", "options": opts}))
    return out, notes


def discover(node: str | None = None, kinds: Sequence[str] | None = None, runner: str | None = None,
             adb_host: str | None = None, adb_port: int | None = None,
             options: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[list[DeviceEntry], list[str]]:
    """This host's devices for the farm: the local runtimes `kinds` (None: every one that runs
    here) and, unless `kinds` leaves "android" out, the phones on its adb server. `options`: agent
    options by kind (e.g. {"ort": {"threads": 2}}). Returns (devices, a line per one left out)."""
    node = node_name(node)
    options = options or {}
    explicit = kinds is not None
    kinds = list(kinds) if explicit else [*LOCAL_KINDS, "android"]
    unknown = [k for k in kinds if k not in (*LOCAL_KINDS, "android")]
    if unknown:
        raise UsageError(f"device kind(s) {', '.join(unknown)}: known are {', '.join((*LOCAL_KINDS, 'android'))}")
    entries: list[DeviceEntry] = []
    notes: list[str] = []
    for kind in (k for k in kinds if k != "android"):
        try:
            entries.append(local_entry(kind, node, options.get(kind)))
        except LatbenchError as e:
            if explicit:
                raise
            notes.append(f"{kind} left out: {str(e).splitlines()[0]}")
    if "android" in kinds:
        phones, why = phone_entries(node, runner, adb_host, adb_port, options.get("android"))
        entries += phones
        notes += why
    return entries, notes


def node_resources(entries: Sequence[DeviceEntry]) -> dict[str, float]:
    """The custom resources a node advertises for `entries`: one unit per device."""
    return {e.resource: 1.0 for e in entries}
