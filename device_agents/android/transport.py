"""adb transport: the adb server protocol through adbutils, with a client that never starts a
server itself (adbutils would run `adb start-server` when a connect fails): no server means
DeviceUnavailableError (exit 4) with a hint, fast. The server and the phone are chosen as adb's own
client chooses them (ADB_SERVER_SOCKET, ANDROID_ADB_SERVER_ADDRESS/PORT, ANDROID_SERIAL).

Besides the client: the device list, one device shell (shell v2 where offered), a push of many
files in ONE sync session (adbutils opens one per file, plus a STAT each), and the properties
`latbench devices` shows.
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import stat as stat_mod
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence

from latbench.errors import DeviceUnavailableError, LatbenchError, UsageError, require

# the variables adb's own client reads (and adbutils' ANDROID_ADB_SERVER_HOST)
ENV_SOCKET, ENV_ADDRESS, ENV_HOST, ENV_PORT = ("ADB_SERVER_SOCKET", "ANDROID_ADB_SERVER_ADDRESS",
                                               "ANDROID_ADB_SERVER_HOST", "ANDROID_ADB_SERVER_PORT")
ENV_SERIAL = "ANDROID_SERIAL"  # the device adb picks when no serial is given
CONNECT_HINT = ("start one with `adb start-server` (platform-tools), or point latbench at a running "
                "server with ADB_SERVER_SOCKET=tcp:HOST:PORT or ANDROID_ADB_SERVER_ADDRESS / ANDROID_ADB_SERVER_PORT")
SYNC_CHUNK = 64 * 1024


def check_port(text: str, what: str) -> int:
    """A port number (1-65535) from `text`, else a UsageError naming where it came from."""
    t = text.strip()
    if not re.fullmatch(r"[0-9]{1,5}", t) or not 1 <= int(t) <= 65535:
        raise UsageError(f"{what} must be a port number (1-65535), got {text!r}")
    return int(t)


def _socket_spec(spec: str) -> tuple[str, int]:
    """ADB_SERVER_SOCKET as adb reads it (socket_spec.cpp): tcp:PORT (this host) or tcp:HOST:PORT,
    an IPv6 host in brackets; adb's local: forms are unix sockets, which latbench does not speak."""
    rest = spec[4:] if spec.startswith("tcp:") else None
    if rest is not None and re.fullmatch(r"[0-9]+", rest):
        return "127.0.0.1", check_port(rest, f"the port of {ENV_SOCKET}")
    m = re.fullmatch(r"\[([^\]]+)\]:([0-9]+)|([^:\[\]]+):([0-9]+)", rest or "")
    if m is None:
        raise UsageError(f"{ENV_SOCKET} must be tcp:PORT or tcp:HOST:PORT (latbench talks TCP to the adb "
                         f"server), got {spec!r}")
    return m.group(1) or m.group(3), check_port(m.group(2) or m.group(4), f"the port of {ENV_SOCKET}")


def env_set(name: str) -> bool:
    """Whether an environment variable holds more than blanks (adb ignores an empty one)."""
    return bool(os.environ.get(name, "").strip())


def server_address(host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """The adb server to talk to, chosen as adb's client chooses (commandline.cpp): an explicit
    host or port (adb -H/-P) rules its own part and turns ADB_SERVER_SOCKET off; else
    ADB_SERVER_SOCKET (tcp:[HOST:]PORT); else ANDROID_ADB_SERVER_ADDRESS (adbutils reads
    ANDROID_ADB_SERVER_HOST: honoured after it) and ANDROID_ADB_SERVER_PORT; else 127.0.0.1:5037.
    A malformed variable is a UsageError naming it (ANDROID_ADB_SERVER_PORT whenever it is set:
    importing adbutils reads it too)."""
    env = os.environ
    env_port = check_port(env[ENV_PORT], ENV_PORT) if env_set(ENV_PORT) else None
    if host is None and port is None and env_set(ENV_SOCKET):
        return _socket_spec(env[ENV_SOCKET].strip())
    host = host or env.get(ENV_ADDRESS, "").strip() or env.get(ENV_HOST, "").strip() or "127.0.0.1"
    return host, port if port is not None else env_port or 5037


def _adbutils():
    """adbutils, imported after server_address checked the variables: its import builds a client
    from ANDROID_ADB_SERVER_PORT and fails on any value int() rejects, even the empty one adb ignores."""
    if "adbutils" in sys.modules or env_set(ENV_PORT):
        return require("adbutils", "android")
    saved = os.environ.pop(ENV_PORT, None)
    try:
        return require("adbutils", "android")
    finally:
        if saved is not None:
            os.environ[ENV_PORT] = saved


def adb_client(host: str | None = None, port: int | None = None, timeout: float = 30.0):
    """An adbutils client that never spawns `adb start-server`: DeviceUnavailableError when no
    server answers (checked at once, within a 2 s connect timeout)."""
    host, port = server_address(host, port)
    adbutils = _adbutils()

    class NoSpawnConnection(adbutils.AdbConnection):
        """adbutils' connection minus its fallback of running `adb start-server` (which reads
        ADBUTILS_ADB_PATH and may start, or hang on, a server of another adb version)."""

        def _safe_connect(self):
            return self._create_socket()

    class Client(adbutils.AdbClient):
        """AdbClient whose every connection is a NoSpawnConnection with a bounded timeout."""

        def make_connection(self, timeout: float | None = None):
            try:
                c = NoSpawnConnection(self.host, self.port)
            except (adbutils.AdbError, OSError) as e:
                raise DeviceUnavailableError(
                    f"no adb server reachable at {self.host}:{self.port} ({e}): {CONNECT_HINT}") from None
            c.conn.settimeout(timeout or self._latbench_timeout)
            # no Nagle: a sync push writes SEND, DATA and DONE frames back to back, and each small
            # write would otherwise wait for the server's delayed ACK (about 40 ms a file)
            c.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return c

    try:
        with socket.create_connection((host, port), timeout=2.0):
            pass
    except OSError as e:
        raise DeviceUnavailableError(
            f"no adb server reachable at {host}:{port} ({e.strerror or e}): {CONNECT_HINT}") from None
    client = Client(host=host, port=port, socket_timeout=timeout)
    client._latbench_timeout = timeout
    return client


def _host_query(client, request: str) -> str:
    """One host service answered by a length-prefixed block (host:devices...)."""
    with client.make_connection() as c:
        c.send_command(request)
        c.check_okay()
        return c.read_string_block()


def list_devices(client) -> list[dict[str, Any]]:
    """Attached devices as {serial, state, model, product, device, transport_id} (any state).

    Serials come from `host:devices` (tab-separated, exact even with spaces); `host:devices-l`
    adds the tags."""
    rows: list[dict[str, Any]] = []
    for line in _host_query(client, "host:devices").splitlines():
        serial, sep, state = line.rpartition("\t")
        if sep:
            rows.append({"serial": serial, "state": state.strip()})
    long_lines = _host_query(client, "host:devices-l").splitlines()
    for row in rows:
        for line in long_lines:
            rest = line[len(row["serial"]):] if line.startswith(row["serial"]) else None
            if rest is None or not rest[:1].isspace():
                continue
            for part in rest.split():
                k, sep, v = part.partition(":")
                if sep and k in ("model", "product", "device", "transport_id"):
                    row[k] = v
            break
    return rows


def adb_errors() -> tuple[type[BaseException], ...]:
    adbutils = _adbutils()
    return (adbutils.AdbError, OSError, EOFError, socket.timeout)



@dataclass(frozen=True)
class ShellResult:
    """One device shell command's exit code and output (shell v1, before Android 7, merges stderr
    into stdout and gives no exit code)."""

    returncode: int
    stdout: str
    stderr: str


def shell(device, cmd: str, timeout: float) -> ShellResult:
    """Run one device shell command (shell v2 where offered); adb errors propagate (adb_errors)."""
    r = device.shell2(cmd, timeout=timeout, v2=True)
    out = r.stdout if r.stdout or r.stderr else r.output  # shell v1 (pre-Android 7): merged output only
    return ShellResult(r.returncode, out, r.stderr)


def _send_all(conn, data: bytes | memoryview) -> None:
    """Write all of `data` on an adbutils connection (its public `send` may write part of it)."""
    view = memoryview(data)
    while view:
        sent = conn.send(view)
        if not sent:
            raise EOFError("adb connection closed while sending")
        view = view[sent:]


def _sync_frame(conn, tag: bytes, payload: bytes | memoryview = b"") -> None:
    """One sync-protocol request: 4-byte tag, little-endian u32 length, payload."""
    _send_all(conn, tag + struct.pack("<I", len(payload)))
    if payload:
        _send_all(conn, payload)


def push(device, files: Sequence[tuple[str, bytes, int]], timeout: float, serial: str = "") -> None:
    """Push (device path, bytes, mode) files in ONE sync session: SEND, DATA chunks and DONE per
    file, each answered OKAY, then QUIT. A refused write is a LatbenchError naming the path; adb
    errors propagate (adb_errors)."""
    c = device.open_transport(timeout=timeout)
    try:
        c.send_command("sync:")
        c.check_okay()
        for path, data, mode in files:
            _sync_frame(c, b"SEND", f"{path},{stat_mod.S_IFREG | mode}".encode())
            view = memoryview(data)
            for off in range(0, len(data), SYNC_CHUNK):
                _sync_frame(c, b"DATA", view[off:off + SYNC_CHUNK])
            _send_all(c, b"DONE" + struct.pack("<I", int(time.time())))
            reply = c.read_exact(8)
            if reply[:4] != b"OKAY":
                size = struct.unpack("<I", reply[4:])[0]
                msg = c.read_exact(min(size, 4096)).decode("utf-8", "replace") if size else ""
                raise LatbenchError(f"device {serial or '?'}: cannot write {path}: {msg or reply!r}")
        _sync_frame(c, b"QUIT")
    finally:
        c.close()


# what `latbench devices` shows of a ready device: column -> system property
DEVICE_PROPS = {"manufacturer": "ro.product.manufacturer", "model": "ro.product.model", "soc": "ro.soc.model",
                "platform": "ro.board.platform", "android": "ro.build.version.release",
                "sdk": "ro.build.version.sdk", "abi": "ro.product.cpu.abi"}


def describe_device(client, row: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """A list_devices row plus DEVICE_PROPS (one shell round trip, ready devices only); an adb
    failure is kept as the row's `error` instead of raised, so one bad device does not hide others."""
    out = {"serial": row["serial"], "state": row["state"], "model": row.get("model", "").replace("_", " "),
           **{k: "" for k in DEVICE_PROPS if k != "model"}, "transport_id": row.get("transport_id", "")}
    if row["state"] != "device":
        return out
    q = shlex.quote  # every word sent to the device shell is quoted
    cmd = "; ".join(f"printf '%s=%s\\n' {q(k)} \"$(getprop {q(p)} | head -n 1)\"" for k, p in DEVICE_PROPS.items())
    try:
        text = client.device(serial=row["serial"]).shell(cmd, timeout=timeout)
    except adb_errors() as e:
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and k in DEVICE_PROPS and v.strip():
            out[k] = v.strip()
    return out


def describe_devices(host: str | None = None, port: int | None = None, timeout: float = 10.0
                     ) -> tuple[tuple[str, int], list[dict[str, Any]]]:
    """The adb server's address and every attached device described (describe_device): what
    `latbench devices` prints. No server is DeviceUnavailableError."""
    client = adb_client(host, port, timeout=timeout)
    return (client.host, client.port), [describe_device(client, r, timeout) for r in list_devices(client)]
