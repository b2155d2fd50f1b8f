"""Ray for the farm: imported lazily with a one-line hint when absent, and joined on one address."""
from __future__ import annotations

from ..errors import DeviceUnavailableError, LatbenchError, require

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
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, include_dashboard=False,
                 logging_level="ERROR", configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise DeviceUnavailableError(f"no Ray cluster at {address}: {str(e).strip().splitlines()[0][:200]} "
                                     f"(start one with `ray start --head`, then `latbench farm node` on each host)") from None
    return ray


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
