"""`latbench devices`: the Android devices an adb server sees, with what a latency table records.

Talks to the adb server itself (adbutils) and never starts one: with no server reachable it exits 4
with a one-line hint, within seconds. What each device shows is the android transport's
`describe_devices` (one adb shell per ready device); this module only prints it.
"""
from __future__ import annotations

import json

import typer


def devices_command(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document (a list of devices)."),
) -> None:
    """List the Android devices attached to the adb server: serial, state, model, SoC, Android version."""
    from rich.console import Console
    from rich.table import Table

    from device_agents.android import describe_devices

    (host, port), rows = describe_devices(timeout=10.0)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    err = Console(stderr=True, highlight=False)
    if not rows:
        err.print("no devices attached (USB debugging on? cable? `adb devices` shows the same list)")
        return
    table = Table(title=f"adb server {host}:{port}", title_justify="left")
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
