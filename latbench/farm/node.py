"""The node agent: what `latbench farm node` does on each host. It joins the host to the Ray
cluster advertising each of the host's devices as a custom resource (`ray start --resources`),
then starts one detached actor per device there (DeviceWorker), pinned by that resource."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
from typing import Sequence

from ..errors import DeviceUnavailableError, UsageError
from . import ACTOR_PREFIX, NAMESPACE
from .discover import DeviceEntry, node_resources
from .ray_env import connect, ray_module

ACTOR_OPTIONS = dict(num_cpus=0, max_concurrency=4, lifetime="detached", max_restarts=0)


def ray_start_command(address: str, entries: Sequence[DeviceEntry], num_cpus: int = 1,
                      node_ip: str | None = None) -> list[str]:
    """The `ray start` that joins this host to the cluster at `address`, one custom resource per device."""
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", f"--address={address}",
           f"--resources={json.dumps(node_resources(entries))}", f"--num-cpus={num_cpus}", "--disable-usage-stats"]
    return cmd + ([f"--node-ip-address={node_ip}"] if node_ip else [])


def join_cluster(address: str, entries: Sequence[DeviceEntry], num_cpus: int = 1, node_ip: str | None = None,
                 timeout: float = 120.0) -> str:
    """Run `ray_start_command` on this host; what it printed. Its output goes through a file: the
    daemons it leaves running keep any pipe open."""
    import tempfile

    ray_module()
    if not entries:
        raise UsageError("this host offers no device to the farm (see the lines above): nothing to join with")
    with tempfile.TemporaryFile("w+") as log:
        r = subprocess.run(ray_start_command(address, entries, num_cpus, node_ip), stdout=log,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        log.seek(0)
        text = log.read()
    if r.returncode != 0:
        tail = " ".join(text.strip().splitlines()[-3:])[:400]
        raise DeviceUnavailableError(f"`ray start --address={address}` failed (exit {r.returncode}): {tail}")
    return text


def start_device_actors(entries: Sequence[DeviceEntry], timeout: float = 120.0) -> list[dict]:
    """One detached DeviceWorker actor per device, placed by its resource on the node that
    advertises it; each described once it is up (its state says whether the device answered).
    An actor placed on a node that has just died (a host restarted before Ray noticed its old
    node gone: both advertise the device for a while) is started again until `timeout`.
    Must run connected to the cluster (latbench.farm.ray_env.connect)."""
    import time

    ray = ray_module()
    from .worker import DeviceWorker

    cls = ray.remote(DeviceWorker)
    deadline = time.monotonic() + timeout
    out: dict[str, dict] = {}
    todo = list(entries)
    while todo:
        token = secrets.token_hex(4)  # a restarted node's actors never take a stale actor's name
        refs = {cls.options(name=f"{ACTOR_PREFIX}{e.device_id}@{token}", namespace=NAMESPACE,
                            resources={e.resource: 1}, **ACTOR_OPTIONS).remote(e.to_dict()).describe.remote(): e
                for e in todo}
        ready, waiting = ray.wait(list(refs), num_returns=len(refs), timeout=max(1.0, deadline - time.monotonic()))
        if waiting:
            missing = [refs[r].device_id for r in waiting]
            raise DeviceUnavailableError(f"device actor(s) {', '.join(missing)} did not start within {timeout:g} s "
                                         f"(does a node advertise their resources? `ray status` lists them)")
        todo = []
        for ref in ready:
            try:
                out[refs[ref].device_id] = ray.get(ref)
            except ray.exceptions.ActorDiedError:  # placed on a node that died: place it again
                if time.monotonic() > deadline:
                    raise DeviceUnavailableError(f"device actor {refs[ref].device_id} died as it started, "
                                                 f"again until {timeout:g} s") from None
                todo.append(refs[ref])
        if todo:
            time.sleep(1.0)
    return [out[e.device_id] for e in entries]


def start_node(address: str, entries: Sequence[DeviceEntry], num_cpus: int = 1, join: bool = True,
               node_ip: str | None = None) -> list[dict]:
    """Join this host to the farm at `address` (unless not `join`: it is a node already) and start
    its device actors; each device described."""
    if join:
        join_cluster(address, entries, num_cpus, node_ip)
    connect(address)
    return start_device_actors(entries)
