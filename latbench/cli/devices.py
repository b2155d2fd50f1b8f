"""`latbench devices`: the Android devices an adb server sees, with what a latency table records.

Talks to the adb server itself (adbutils) and never starts one: with no server reachable it exits 4
with a one-line hint, within seconds. One adb shell per ready device reads its properties.
"""
from __future__ import annotations

import json
import shlex
from typing import Any

import typer

PROPS = {"manufacturer": "ro.product.manufacturer", "model": "ro.product.model", "soc": "ro.soc.model",
         "platform": "ro.board.platform", "android": "ro.build.version.release", "sdk": "ro.build.version.sdk",
         "abi": "ro.product.cpu.abi"}


def describe(client, row: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """A device row plus its properties (one shell round trip; ready devices only)."""
    out = {"serial": row["serial"], "state": row["state"], "model": row.get("model", "").replace("_", " "),
           "manufacturer": "", "soc": "", "platform": "", "android": "", "sdk": "", "abi": "",
           "transport_id": row.get("transport_id", "")}
    if row["state"] != "device":
        return out
    from device_agents.android import _adb_errors

    q = shlex.quote  # every word sent to the device shell is quoted
    cmd = "; ".join(f"printf '%s=%s\\n' {q(k)} \"$(getprop {q(p)} | head -n 1)\"" for k, p in PROPS.items())
    try:
        text = client.device(serial=row["serial"]).shell(cmd, timeout=timeout)
    except _adb_errors() as e:
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k in PROPS and v.strip():
            out[k] = v.strip()
    return out


def devices_command(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (a list of devices)."),
) -> None:
    """List the Android devices attached to the adb server: serial, state, model, SoC, Android version."""
    from rich.console import Console
    from rich.table import Table

    from device_agents.android import adb_client, list_devices

    client = adb_client(timeout=10.0)
    rows = [describe(client, r) for r in list_devices(client)]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    err = Console(stderr=True, highlight=False)
    if not rows:
        err.print("no devices attached (USB debugging on? cable? `adb devices` shows the same list)")
        return
    table = Table(title=f"adb server {client.host}:{client.port}", title_justify="left")
    for col in ("serial", "state", "model", "SoC", "Android"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        soc = r["soc"] + (f" ({r['platform']})" if r["platform"] and r["soc"] else r["platform"])
        model = " ".join(x for x in (r["manufacturer"], r["model"]) if x)
        android = f"{r['android']} (SDK {r['sdk']})" if r["android"] else ""
        table.add_row(r["serial"], r["state"], model, soc, android)
    Console(highlight=False, soft_wrap=True).print(table)
    for r in rows:
        if r["state"] == "unauthorized":
            err.print(f"{r['serial']}: unauthorized: accept the USB debugging prompt on the phone")
        elif r.get("error"):
            err.print(f"{r['serial']}: {r['error']}")
