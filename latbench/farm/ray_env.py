"""Ray for the farm: imported lazily with a one-line hint when absent, and joined on one address."""
from __future__ import annotations

from ..errors import DeviceUnavailableError, LatbenchError, UsageError, require

from . import NAMESPACE


def ray_module():
    """The ray module, or MissingExtraError naming the `farm` extra."""
    return require("ray", "farm")


def connect(address: str):
    """Join the Ray cluster at `address` (host:port of its head, or "auto") as a driver in the
    farm's namespace; the ray module. A cluster that cannot be reached is DeviceUnavailableError."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    _answers(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, include_dashboard=False,
                 logging_level="ERROR", configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise DeviceUnavailableError(f"no Ray cluster at {address}: {str(e).strip().splitlines()[0][:200]} "
                                     f"(start one with `ray start --head`, then `latbench farm node` on each host)") from None
    return ray


def _answers(address: str, timeout: float = 5.0) -> None:
    """A cluster's head that does not even accept a connection is refused at once, in one line
    (Ray's own client retries for minutes, logging as it goes)."""
    import socket

    if address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--address {address!r}: give the head's HOST:PORT (`ray start --head` prints it)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise DeviceUnavailableError(f"no Ray cluster at {address}: {e.strerror or e} (start one with `ray start "
                                     f"--head`, then `latbench farm node` on each host)") from None


def disconnect() -> None:
    """Leave the cluster (the farm's actors stay on their nodes)."""
    ray = ray_module()
    if ray.is_initialized():
        ray.shutdown()


def get(ray, ref, timeout: float | None = None):
    """ray.get of an actor call, its error as latbench raises it: a LatbenchError raised on the
    device's host comes back as itself (one line at the CLI), anything else as one LatbenchError."""
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, LatbenchError):
            raise cause from None
        raise LatbenchError(f"on a farm device: {type(cause or e).__name__}: "
                            f"{' '.join(str(cause or e).split())[:300]}") from None
