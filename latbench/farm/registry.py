"""The farm's devices as the driver sees them: every device actor in the cluster (named
ACTOR_PREFIX + device id + "@" + a token of its node agent's start), asked to describe itself, and
every device a live node advertises (its custom resource) whose actor does not answer."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import ACTOR_PREFIX, NAMESPACE, RESOURCE_PREFIX

STATES = ("idle", "busy", "hot", "offline")


@dataclass
class FarmDevice:
    """One device of the farm: where it is, what it is, its profile and its state."""

    device_id: str
    kind: str = ""
    node: str = ""
    host: str = ""
    model: str = ""
    soc: str = ""
    profile_id: str | None = None
    profile: dict[str, Any] | None = None
    state: str = "offline"
    error: str = ""
    host_cpu: bool = False
    actor: str = ""  # the actor's name ("" where a node advertises the device and no actor answers)
    handle: Any = field(default=None, repr=False, compare=False)
    answered: bool = True  # False: its actor did not answer in time (it may be starting, or on a dead node)

    @classmethod
    def described(cls, d: dict[str, Any], actor: str, handle: Any) -> "FarmDevice":
        return cls(d["device_id"], d["kind"], d["node"], d.get("host", ""), d.get("model", ""), d.get("soc", ""),
                   d.get("profile_id"), d.get("profile"), d.get("state", "offline"), d.get("error", ""),
                   bool(d.get("host_cpu")), actor, handle)

    def to_dict(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "kind": self.kind, "node": self.node, "host": self.host,
                "model": self.model, "soc": self.soc, "profile_id": self.profile_id, "state": self.state,
                "error": self.error, "actor": self.actor}


def actor_names(ray) -> list[str]:
    """Names of the farm's device actors the cluster knows (alive or not yet known dead)."""
    return sorted(n for n in ray.util.list_named_actors() if n.startswith(ACTOR_PREFIX))


def device_of_actor(name: str) -> str:
    """The device id in an actor's name."""
    return name[len(ACTOR_PREFIX):].rsplit("@", 1)[0]


def list_farm(ray, timeout: float = 10.0, probe: bool = False) -> list[FarmDevice]:
    """Every device of the farm, described by its actor within `timeout` seconds (an actor that
    does not answer is offline; `probe`: an offline device is tried again first). Devices a live
    node advertises with no actor answering are listed offline too. Sorted by node and id."""
    handles = {}
    for name in actor_names(ray):
        try:
            handles[name] = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:  # gone between the listing and now
            continue
    refs = {(h.probe if probe else h.describe).remote(): name for name, h in handles.items()}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout) if refs else ([], [])
    out: dict[str, FarmDevice] = {}
    for ref in refs:
        name = refs[ref]
        dev = None
        if ref in ready:
            try:
                dev = FarmDevice.described(ray.get(ref), name, handles[name])
            except Exception as e:  # noqa: BLE001 - a dead actor's call fails: the device is offline
                dev = FarmDevice(device_of_actor(name), state="offline", error=_first_line(e), actor=name,
                                 handle=handles[name])
        else:
            dev = FarmDevice(device_of_actor(name), state="offline", error=f"its actor did not answer in {timeout:g} s",
                             actor=name, handle=handles[name], answered=False)
        have = out.get(dev.device_id)
        if have is None or (have.state == "offline" and dev.state != "offline"):
            out[dev.device_id] = dev  # an older actor of a node that was restarted loses to the live one
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        for res in node.get("Resources", {}):
            if res.startswith(RESOURCE_PREFIX) and res[len(RESOURCE_PREFIX):] not in out:
                did = res[len(RESOURCE_PREFIX):]
                out[did] = FarmDevice(did, state="offline", error="advertised by its node, no actor holds it "
                                      "(run `latbench farm node` on that host)", host=node.get("NodeManagerHostname", ""))
    return sorted(out.values(), key=lambda d: (d.node, d.device_id))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"
