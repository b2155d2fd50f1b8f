"""The device farm on Ray: many devices on many hosts profile, validate and calibrate at once.

Each host runs a Ray node started by `latbench farm node` (`latbench.farm.node`): it finds the
host's devices (`discover`: phones on the host's adb server, local runtimes), advertises each as a
Ray custom resource and starts one actor per device there (`worker.DeviceWorker`). A driver
(`latbench profile --farm`, `driver.farm_profile`) lists the farm's devices (`registry`), groups
them by device profile, builds one table per profile from a queue of batches that the profile's
devices take from as they become idle, and is the only writer of every table. Ray places, runs and
carries everything; nothing here schedules or talks on the network itself.

Ray is the `farm` extra: `pip install 'latbench[farm]'`; it is imported only by these modules.
"""
from __future__ import annotations

NAMESPACE = "latbench"  # the Ray namespace of the farm's named actors
ACTOR_PREFIX = "latbench-device:"  # a device actor's name: prefix + device id + "@" + its node's id
RESOURCE_PREFIX = "latbench-device:"  # a device's custom resource: prefix + device id (one unit)
