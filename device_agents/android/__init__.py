"""Android: ops and whole networks timed on a phone over adb by TFLite's benchmark_model (or ONNX
Runtime's onnxruntime_perf_test). One module per job: `transport` (the adb client, device list,
shell and one-session push), `parsers` (what the runners print), `facts` (probe, temperatures,
cores and masks), `agent` (AndroidOptions, AndroidAgent); the on-device scripts lie beside them."""
from __future__ import annotations

from .agent import BATCH_SIZE, DELEGATES, DEVICE_ROOT, AndroidAgent, AndroidOptions
from .facts import DeviceFacts, Temps, core_tiers, cpu_mask, parse_probe, parse_temps
from .parsers import RunResult, failure_message, parse_benchmark_model, parse_perf_test
from .transport import (
    DEVICE_PROPS, ShellResult, adb_client, adb_errors, describe_device, describe_devices, list_devices, push,
    server_address, shell,
)

__all__ = ["AndroidAgent", "AndroidOptions", "BATCH_SIZE", "DELEGATES", "DEVICE_PROPS", "DEVICE_ROOT", "DeviceFacts",
           "RunResult", "ShellResult", "Temps", "adb_client", "adb_errors", "core_tiers", "cpu_mask",
           "describe_device", "describe_devices", "failure_message", "list_devices", "parse_benchmark_model",
           "parse_perf_test", "parse_probe", "parse_temps", "push", "server_address", "shell"]
