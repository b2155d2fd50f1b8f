"""Stand-in adb server and fake Android devices for testing the Android agent without a phone.

    from adb_standin import StandinServer, FakeDevice
    with StandinServer([FakeDevice("pixel7")]) as srv:      # StandinUnavailable -> skip
        client = adbutils.AdbClient(host="127.0.0.1", port=srv.port)
        dev = srv.device("28031FDH2000A7")                   # steer it: set_temperature, crash_on...
        ... dev.commands, dev.round_trips, dev.read_file("/data/local/tmp/x")

BENCHMARK_MODEL is the stand-in benchmark_model to push; real_adb_path() finds the `adb` client
bundled in adbutils' wheel; tflite_models builds tiny real .tflite files.
"""
from __future__ import annotations

import os
from pathlib import Path

from .device import OUTPUT_STYLES, FakeDevice, StandinUnavailable, list_profiles, load_profile
from .server import ADB_SERVER_VERSION, FEATURES, StandinServer
from .tflite_models import add_model, conv_model, write_model

BENCHMARK_MODEL = Path(__file__).resolve().with_name("benchmark_model")
PIXEL = load_profile("pixel7")["serial"]  # the serials of the two bundled device profiles
GALAXY = load_profile("galaxy_s21_sd888")["serial"]


def real_adb_path() -> Path | None:
    """The real adb client binary shipped in adbutils' wheel, if present and executable."""
    try:
        import adbutils
    except ImportError:
        return None
    exe = Path(adbutils.__file__).resolve().parent / "binaries" / "adb"
    return exe if exe.is_file() and os.access(exe, os.X_OK) else None


__all__ = ["ADB_SERVER_VERSION", "BENCHMARK_MODEL", "FEATURES", "GALAXY", "OUTPUT_STYLES", "PIXEL", "FakeDevice", "StandinServer",
           "StandinUnavailable", "add_model", "conv_model", "list_profiles", "load_profile", "real_adb_path",
           "write_model"]
