"""StandinServer: a loopback adb *server* speaking the real smart-socket protocol to fake devices.

adbutils and the real `adb` client connect to it as to `adb start-server`'s server: 4-hex-digit
length-framed requests, OKAY/FAIL replies, host services (version 41, devices[-l], features,
transport selection incl. `host:tport:*` with its 8-byte transport id) and, on the same socket,
the device services shell (raw and shell protocol v2), exec and sync (STAT/STA2/LST2, LIST/LIS2,
SEND, RECV, QUIT). A second, unix socket carries requests of the stand-in benchmark_model.
"""
from __future__ import annotations

import collections
import importlib.machinery
import importlib.util
import json
import os
import select
import shutil
import socket
import stat as stat_mod
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

from .device import HERE, FakeDevice, StandinUnavailable

ADB_SERVER_VERSION = 41
FEATURES = "shell_v2,cmd,stat_v2,ls_v2,fixed_push_mkdir,fixed_push_symlink_timestamp"
SYNC_DATA_MAX = 64 * 1024
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_UNAUTHORIZED = ("device unauthorized.\nThis adb server's $ADB_VENDOR_KEYS is not set\n"
                 "Try 'adb kill-server' if that seems wrong.\n"
                 "Otherwise check for a confirmation dialog on your device.")
_QUERIES = ("get-state", "get-serialno", "get-devpath", "features", "list-forward", "killforward-all", "forward",
            "wait-for-")


class _Fail(Exception):
    """A request the server answers with FAIL + message."""


class Conn:
    """One client socket: adb framing helpers, a send lock (shell v2 pumps share it) and abort()."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self._send_lock = threading.Lock()
        self.broken = False

    def recv_exact(self, n: int) -> bytes:
        """Exactly n bytes, or EOFError when the peer closes first."""
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError(f"peer closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def read_request(self) -> str:
        """One length-prefixed request ('000chost:version' -> 'host:version')."""
        size = int(self.recv_exact(4), 16)
        return self.recv_exact(size).decode("utf-8", "replace")

    def send(self, data: bytes) -> None:
        """sendall under the lock; marks the connection broken when the peer is gone."""
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except OSError:
                self.broken = True
                raise

    def okay(self, payload: bytes = b"") -> None:
        """OKAY, optionally followed by raw bytes."""
        self.send(b"OKAY" + payload)

    def fail(self, message: str) -> None:
        """FAIL + hex length + message."""
        data = message.encode()
        self.send(b"FAIL" + b"%04x" % len(data) + data)

    def block(self, text: str) -> None:
        """A hex-length-prefixed string (the body of host query replies)."""
        data = text.encode()
        self.send(b"%04x" % len(data) + data)

    def packet(self, ident: int, data: bytes) -> None:
        """A shell protocol v2 packet: id byte, u32 LE length, data."""
        self.send(struct.pack("<BI", ident, len(data)) + data)

    def abort(self) -> None:
        """Close abruptly (both directions), as a vanished USB device does."""
        self.broken = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def close(self) -> None:
        """Orderly close after a reply."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.sock.close()


def _request_kind(req: str) -> str:
    """A request without its serial or command, for the host_requests counter."""
    for prefix in ("host:tport", "host:transport", "host-serial", "host-transport-id", "host-usb", "host-local"):
        if req.startswith(prefix):
            return prefix
    return req


def load_runner() -> ModuleType:
    """The stand-in benchmark_model script imported as a module (its LiteRT measuring engine)."""
    path = HERE / "benchmark_model"
    loader = importlib.machinery.SourceFileLoader("adb_standin_benchmark_model", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class StandinServer:
    """A stand-in adb server on loopback serving FakeDevices; start()/stop() or use as a context manager."""

    def __init__(self, devices: Iterable[FakeDevice] = (), host: str = "127.0.0.1", port: int = 0,
                 command_timeout: float = 600.0, idle_timeout: float = 120.0) -> None:
        if host not in _LOOPBACK:
            raise ValueError(f"the stand-in adb server listens on loopback only, not {host!r}")
        self.host = host
        self._requested_port = port
        self.command_timeout = command_timeout
        self.idle_timeout = idle_timeout
        self._devices: list[FakeDevice] = list(devices)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: set[Conn] = set()
        self._next_tid = 1
        self.connections = 0
        self.host_requests: collections.Counter[str] = collections.Counter()
        self._listener: socket.socket | None = None
        self._ctl: socket.socket | None = None
        self._tmp: Path | None = None
        self._runner: ModuleType | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The TCP port clients connect to (chosen by the OS when port=0)."""
        if self._listener is None:
            raise RuntimeError("server not started")
        return self._listener.getsockname()[1]

    @property
    def control_socket(self) -> str:
        """Path of the unix socket the stand-in benchmark_model talks to."""
        return str(self._tmp / "ctl.sock")

    def start(self) -> "StandinServer":
        """Listen, start the accept threads and bring every device up (StandinUnavailable if impossible)."""
        self._tmp = Path(tempfile.mkdtemp(prefix="adb-standin-srv-"))
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, self._requested_port))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self._ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._ctl.bind(self.control_socket)
        self._ctl.listen(64)
        self._ctl.settimeout(0.2)
        try:
            for dev in list(self._devices):
                self._attach(dev)
        except Exception:
            self.stop()
            raise
        self._spawn(self._accept_loop, self._listener, self._handle_client)
        self._spawn(self._accept_loop, self._ctl, self._handle_control)
        return self

    def stop(self) -> None:
        """Close every socket, kill device commands, end the namespaces and delete temp dirs."""
        self._stop.set()
        for s in (self._listener, self._ctl):
            if s is not None:
                s.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.abort()
        for dev in list(self._devices):
            dev.close()
        for t in list(self._threads):
            t.join(timeout=5)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "StandinServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _spawn(self, target: Any, *args: Any) -> None:
        """Start a daemon thread and remember it for stop()."""
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _accept_loop(self, listener: socket.socket, handler: Any) -> None:
        """Accept until stop(); each connection gets its own thread."""
        while not self._stop.is_set():
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._spawn(handler, sock)

    # ---- devices -----------------------------------------------------------------------------
    @property
    def devices(self) -> list[FakeDevice]:
        """Every device attached (online or not)."""
        with self._lock:
            return list(self._devices)

    def device(self, serial: str) -> FakeDevice:
        """The attached device with this serial (KeyError if none)."""
        for d in self.devices:
            if d.serial == serial:
                return d
        raise KeyError(serial)

    def add_device(self, dev: FakeDevice) -> FakeDevice:
        """Plug a device in (it appears in host:devices)."""
        with self._lock:
            if any(d.serial == dev.serial for d in self._devices):
                raise ValueError(f"a device with serial {dev.serial} is already attached")
            self._devices.append(dev)
        if self._listener is not None:
            self._attach(dev)
        return dev

    def remove_device(self, serial: str) -> FakeDevice:
        """Unplug a device: its connections drop and it leaves host:devices (its files stay until close())."""
        dev = self.device(serial)
        with self._lock:
            self._devices.remove(dev)
        dev.disconnect()
        return dev

    def _attach(self, dev: FakeDevice) -> None:
        """Give the device a transport id and its namespace."""
        with self._lock:
            tid, self._next_tid = self._next_tid, self._next_tid + 1
        dev.attach(self, self.control_socket, [str(self._tmp)], tid)
        dev.online = True

    def _reconnect(self, dev: FakeDevice) -> None:
        """A disconnected device comes back with a fresh transport id."""
        with self._lock:
            dev.transport_id, self._next_tid = self._next_tid, self._next_tid + 1

    def _online(self) -> list[FakeDevice]:
        """Devices currently visible to clients."""
        return [d for d in self.devices if d.online]

    def _listing(self, long: bool) -> str:
        """host:devices / host:devices-l text."""
        out = []
        for i, d in enumerate(self._online(), 1):
            if not long:
                out.append(f"{d.serial}\t{d.state}\n")
                continue
            props = d.profile["props"]
            model = "".join(c if c.isalnum() else "_" for c in props.get("ro.product.model", ""))
            out.append(f"{d.serial:<22} {d.state} usb:1-{i} product:{props.get('ro.product.name', '')} "
                       f"model:{model} device:{props.get('ro.product.device', '')} transport_id:{d.transport_id}\n")
        return "".join(out)

    def _select(self, serial: str | None = None, tid: int | None = None, kind: str = "any",
                any_state: bool = False) -> FakeDevice:
        """The device a transport request names, or _Fail with adb's message."""
        online = self._online()
        if serial is not None:
            found = [d for d in online if d.serial == serial]
            if not found:
                raise _Fail(f"device '{serial}' not found")
        elif tid is not None:
            found = [d for d in online if d.transport_id == tid]
            if not found:
                raise _Fail(f"no device with transport id '{tid}'")
        else:
            found = [] if kind == "local" else online
            if not found:
                raise _Fail("no emulators found" if kind == "local" else "no devices/emulators found")
            if len(found) > 1:
                raise _Fail("more than one device/emulator")
        dev = found[0]
        if not any_state and dev.state != "device":
            raise _Fail(_UNAUTHORIZED if dev.state == "unauthorized" else f"device {dev.state}")
        return dev

    # ---- host services -----------------------------------------------------------------------
    def _handle_client(self, sock: socket.socket) -> None:
        """Serve one client connection: a host request, possibly switching to a device service."""
        conn = Conn(sock, self.idle_timeout)
        with self._lock:
            self._conns.add(conn)
            self.connections += 1
        try:
            self._serve(conn)
        except (OSError, EOFError, ValueError):
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _serve(self, conn: Conn) -> None:
        """Dispatch the first request of a connection."""
        req = conn.read_request()
        self.host_requests[_request_kind(req)] += 1
        try:
            if req == "host:version":
                conn.okay()
                conn.block(f"{ADB_SERVER_VERSION:04x}")
            elif req == "host:kill":
                conn.okay()
            elif req in ("host:devices", "host:devices-l"):
                conn.okay()
                conn.block(self._listing(req.endswith("-l")))
            elif req in ("host:track-devices", "host:track-devices-l"):
                self._track(conn, req.endswith("-l"))
            elif req == "host:host-features":
                conn.okay()
                conn.block(FEATURES)
            elif req.startswith(("host:transport", "host:tport:")):
                dev, with_id = self._transport(req)
                conn.okay(struct.pack("<Q", dev.transport_id) if with_id else b"")
                self._device_service(conn, dev)
            elif req.startswith(("host:", "host-serial:", "host-transport-id:", "host-usb:", "host-local:")):
                self._query(conn, req)
            else:
                raise _Fail(f"unknown host service '{req}'")
        except _Fail as e:
            conn.fail(str(e))

    def _transport(self, req: str) -> tuple[FakeDevice, bool]:
        """host:transport*/host:tport:* -> (device, whether an 8-byte transport id follows OKAY)."""
        with_id = req.startswith("host:tport:")
        spec = req[len("host:tport:"):] if with_id else req[len("host:transport"):]
        if spec.startswith(("serial:", ":")):
            return self._select(serial=spec.split(":", 1)[1]), with_id
        if spec.startswith(("transport-id:", "-id:")):
            return self._select(tid=int(spec.split(":", 1)[1])), with_id
        kind = spec.lstrip("-")
        if kind not in ("any", "usb", "local"):
            raise _Fail(f"unknown transport request '{req}'")
        return self._select(kind=kind), with_id

    def _query(self, conn: Conn, req: str) -> None:
        """host[-serial:S|-transport-id:N|-usb|-local]:QUERY for one device (or the server)."""
        prefix, rest = req.split(":", 1)
        serial = tid = None
        kind = {"host-usb": "usb", "host-local": "local"}.get(prefix, "any")
        if prefix == "host-serial":
            serial, rest = self._split_serial(rest)
        elif prefix == "host-transport-id":
            tid_text, rest = rest.split(":", 1)
            tid = int(tid_text)
        if rest.startswith("wait-for-"):
            self._wait_for(conn, rest, serial, tid)
            return
        if not rest.startswith(_QUERIES):
            raise _Fail(f"unknown host service '{req}'")
        dev = self._select(serial, tid, kind, any_state=rest in ("get-state", "get-serialno", "get-devpath"))
        dev.record(rest.split(":")[0], "")
        if rest == "get-state":
            reply = dev.state
        elif rest == "get-serialno":
            reply = dev.serial
        elif rest == "get-devpath":
            reply = f"usb:1-{self._online().index(dev) + 1}"
        elif rest == "features":
            reply = FEATURES
        elif rest == "list-forward":
            reply = ""
        else:
            raise _Fail("port forwarding is not supported by the stand-in adb server")
        conn.okay()
        conn.block(reply)

    def _split_serial(self, rest: str) -> tuple[str, str]:
        """'SERIAL:command' where the serial itself may hold colons (host:port serials)."""
        for d in self.devices:
            if rest.startswith(d.serial + ":"):
                return d.serial, rest[len(d.serial) + 1:]
        for q in _QUERIES:
            i = rest.find(":" + q)
            if i > 0:
                return rest[:i], rest[i + 1:]
        serial, _, cmd = rest.rpartition(":")
        return serial, cmd

    def _wait_for(self, conn: Conn, what: str, serial: str | None, tid: int | None) -> None:
        """wait-for-TRANSPORT-STATE: OKAY now, second OKAY once the device is there (bounded wait)."""
        state = what.rsplit("-", 1)[1]
        conn.okay()
        deadline = time.monotonic() + self.idle_timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                dev = self._select(serial, tid, any_state=True)
                if state in ("device", "any") and dev.state == "device" or state == dev.state:
                    conn.okay()
                    return
            except _Fail:
                if state == "disconnect":
                    conn.okay()
                    return
            time.sleep(0.05)
        conn.fail("timeout expired while waiting for device")

    def _track(self, conn: Conn, long: bool) -> None:
        """host:track-devices: the listing now and after every change, until the client leaves."""
        conn.okay()
        last = None
        while not self._stop.is_set():
            text = self._listing(long)
            if text != last:
                conn.block(text)
                last = text
            ready, _, _ = select.select([conn.sock], [], [], 0.1)
            if ready and not conn.sock.recv(1):
                return

    # ---- device services ---------------------------------------------------------------------
    def _device_service(self, conn: Conn, dev: FakeDevice) -> None:
        """The service requested right after a transport switch: shell, exec, sync..."""
        with dev._lock:
            dev.connections += 1
        dev.track_connection(conn, True)
        try:
            req = conn.read_request()
            if req.startswith("shell") and ":" in req:
                head, cmd = req.split(":", 1)
                opts = head.split(",")[1:]
                v2 = "v2" in opts
                dev.record("shell_v2" if v2 else "shell", cmd)
                self._run(conn, dev, cmd, v2)
            elif req.startswith("exec:"):
                dev.record("exec", req[5:])
                self._run(conn, dev, req[5:], False)
            elif req == "sync:":
                dev.record("sync", "")
                conn.okay()
                self._sync(conn, dev)
            elif req in ("root:", "unroot:"):
                dev.record(req[:-1], "")
                conn.okay()
                conn.send(b"adbd cannot run as root in production builds\n")
            else:
                dev.record("unsupported", req)
                conn.fail("closed")
        finally:
            dev.track_connection(conn, False)

    def _run(self, conn: Conn, dev: FakeDevice, cmd: str, v2: bool) -> None:
        """Run a device command; stream raw output (stderr merged) or v2 packets and the exit code."""
        try:
            proc = dev.spawn(cmd if cmd else None, merge_stderr=not v2)
        except StandinUnavailable as e:
            conn.fail(str(e))
            return
        try:
            conn.okay()
            done = threading.Event()
            pumps = [threading.Thread(target=self._pump_out, args=(conn, proc, proc.stdout, 1, v2), daemon=True)]
            if v2:
                pumps.append(threading.Thread(target=self._pump_out, args=(conn, proc, proc.stderr, 2, v2),
                                              daemon=True))
            feeder = threading.Thread(target=self._pump_in, args=(conn, proc, v2, done), daemon=True)
            for t in pumps + [feeder]:
                t.start()
            deadline = time.monotonic() + self.command_timeout
            for t in pumps:
                t.join(max(0.0, deadline - time.monotonic()))
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                code = proc.wait(5)
            done.set()
            for t in pumps:
                t.join(5)
            if v2 and not conn.broken:
                conn.packet(3, bytes([(128 - code if code < 0 else code) & 0xFF]))
        finally:
            dev.forget_process(proc)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass

    @staticmethod
    def _pump_out(conn: Conn, proc: subprocess.Popen, stream: Any, ident: int, v2: bool) -> None:
        """Copy a command's stdout/stderr to the client; if the client is gone, kill the command."""
        fd = stream.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            if conn.broken:
                continue
            try:
                if v2:
                    conn.packet(ident, data)
                else:
                    conn.send(data)
            except OSError:
                try:
                    os.killpg(proc.pid, 9)
                except OSError:
                    pass

    @staticmethod
    def _pump_in(conn: Conn, proc: subprocess.Popen, v2: bool, done: threading.Event) -> None:
        """Copy client bytes to the command's stdin (v2: stdin packets; close-stdin closes it)."""
        buf = b""
        try:
            while not done.is_set():
                ready, _, _ = select.select([conn.sock], [], [], 0.2)
                if not ready:
                    continue
                data = conn.sock.recv(65536)
                if not data:
                    proc.stdin.close()
                    return
                if not v2:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                    continue
                buf += data
                while len(buf) >= 5:
                    ident, size = struct.unpack("<BI", buf[:5])
                    if len(buf) < 5 + size:
                        break
                    payload, buf = buf[5:5 + size], buf[5 + size:]
                    if ident == 0:
                        proc.stdin.write(payload)
                        proc.stdin.flush()
                    elif ident == 4:
                        proc.stdin.close()
        except (OSError, ValueError):
            return

    # ---- sync ---------------------------------------------------------------------------------
    def _sync(self, conn: Conn, dev: FakeDevice) -> None:
        """The file sync protocol: requests until QUIT or EOF."""
        while True:
            try:
                head = conn.recv_exact(8)
            except EOFError:
                return
            ident, size = head[:4].decode("ascii", "replace"), struct.unpack("<I", head[4:])[0]
            if ident == "QUIT":
                return
            if size > 4096:
                self._sync_fail(conn, "path too long")
                return
            path = conn.recv_exact(size).decode("utf-8", "replace")
            dev.record("sync:" + ident, path)
            if ident == "STAT":
                self._sync_stat_v1(conn, dev, path)
            elif ident in ("STA2", "LST2"):
                self._sync_stat_v2(conn, dev, path, follow=ident == "STA2")
            elif ident in ("LIST", "LIS2"):
                self._sync_list(conn, dev, path, v2=ident == "LIS2")
            elif ident == "SEND":
                if not self._sync_send(conn, dev, path):
                    return
            elif ident == "RECV":
                self._sync_recv(conn, dev, path)
            else:
                self._sync_fail(conn, f"unknown sync command '{ident}'")
                return

    @staticmethod
    def _sync_fail(conn: Conn, message: str) -> None:
        """FAIL + u32 LE length + message (sync framing, not the hex framing)."""
        data = message.encode()
        conn.send(b"FAIL" + struct.pack("<I", len(data)) + data)

    @staticmethod
    def _lstat(dev: FakeDevice, path: str, follow: bool) -> os.stat_result | None:
        """stat/lstat of a device path, None when missing."""
        try:
            host, _ = dev.resolve(path, follow_last=follow)
            return os.stat(host) if follow else os.lstat(host)
        except OSError:
            return None

    def _sync_stat_v1(self, conn: Conn, dev: FakeDevice, path: str) -> None:
        """STAT (lstat): mode, size, mtime as u32; all zero when the path is missing."""
        st = self._lstat(dev, path, follow=False)
        fields = (st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)) if st else (0, 0, 0)
        conn.send(b"STAT" + struct.pack("<III", *fields))

    def _sync_stat_v2(self, conn: Conn, dev: FakeDevice, path: str, follow: bool) -> None:
        """STA2/LST2: the 72-byte sync_stat_v2 (error = errno when missing)."""
        ident = b"STA2" if follow else b"LST2"
        st = self._lstat(dev, path, follow)
        if st is None:
            conn.send(ident + struct.pack("<IQQIIIIQqqq", 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
            return
        conn.send(ident + struct.pack("<IQQIIIIQqqq", 0, st.st_dev, st.st_ino, st.st_mode, st.st_nlink, 2000,
                                      2000, st.st_size, int(st.st_atime), int(st.st_mtime), int(st.st_ctime)))

    def _sync_list(self, conn: Conn, dev: FakeDevice, path: str, v2: bool) -> None:
        """LIST/LIS2: one DENT/DNT2 per entry (with . and ..), then DONE."""
        try:
            host, _ = dev.resolve(path)
            names = [".", ".."] + sorted(os.listdir(host)) if host.is_dir() else []
        except OSError:
            host, names = Path("/nonexistent"), []
        for name in names:
            try:
                st = os.lstat(host / name)
            except OSError:
                continue
            raw = name.encode()
            if v2:
                conn.send(b"DNT2" + struct.pack("<IQQIIIIQqqqI", 0, st.st_dev, st.st_ino, st.st_mode, st.st_nlink,
                                                2000, 2000, st.st_size, int(st.st_atime), int(st.st_mtime),
                                                int(st.st_ctime), len(raw)) + raw)
            else:
                conn.send(b"DENT" + struct.pack("<IIII", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime),
                                                len(raw)) + raw)
        conn.send(b"DONE" + bytes(72 if v2 else 16))

    def _sync_send(self, conn: Conn, dev: FakeDevice, spec: str) -> bool:
        """SEND path,mode then DATA... DONE mtime -> OKAY (parents created); False if the session must end."""
        path, _, mode_text = spec.rpartition(",")
        mode = int(mode_text) if mode_text.isdigit() else 0o100644
        chunks = []
        while True:
            head = conn.recv_exact(8)
            ident, size = head[:4], struct.unpack("<I", head[4:])[0]
            if ident == b"DATA":
                if size > SYNC_DATA_MAX:
                    self._sync_fail(conn, f"data chunk of {size} bytes exceeds {SYNC_DATA_MAX}")
                    return False
                chunks.append(conn.recv_exact(size))
            elif ident == b"DONE":
                mtime = size
                break
            else:
                self._sync_fail(conn, f"invalid data message '{ident.decode('ascii', 'replace')}'")
                return False
        try:
            host, writable = dev.resolve(path)
            if not writable:
                raise OSError(30, "Read-only file system")
            host.parent.mkdir(parents=True, exist_ok=True)
            if stat_mod.S_ISLNK(mode):
                if host.is_symlink() or host.exists():
                    host.unlink()
                os.symlink(b"".join(chunks).decode(), host)
            else:
                with open(host, "wb") as f:
                    for c in chunks:
                        f.write(c)
                os.chmod(host, mode & 0o7777)
                os.utime(host, (mtime, mtime))
        except OSError as e:
            self._sync_fail(conn, f"couldn't create file: {e.strerror or e}")
            return True
        conn.send(b"OKAY" + bytes(4))
        return True

    def _sync_recv(self, conn: Conn, dev: FakeDevice, path: str) -> None:
        """RECV: DATA chunks of at most 64 KiB then DONE, or FAIL with the open error."""
        try:
            host, _ = dev.resolve(path)
            f = open(host, "rb")
        except OSError as e:
            self._sync_fail(conn, f"open failed: {e.strerror or e}")
            return
        with f:
            while True:
                data = f.read(SYNC_DATA_MAX)
                if not data:
                    break
                conn.send(b"DATA" + struct.pack("<I", len(data)) + data)
        conn.send(b"DONE" + bytes(4))

    # ---- the stand-in benchmark_model's control channel ----------------------------------------
    def _handle_control(self, sock: socket.socket) -> None:
        """JSON-lines requests from benchmark_model: start (style, crash), bench (measure), done (count)."""
        sock.settimeout(self.command_timeout)
        pending_disconnect: FakeDevice | None = None
        try:
            with sock, sock.makefile("rwb") as f:
                while True:
                    line = f.readline(1 << 20)
                    if not line:
                        break
                    req = json.loads(line)
                    reply, trigger = self._control(req, sock)
                    f.write(json.dumps(reply).encode() + b"\n")
                    f.flush()
                    if trigger is not None:
                        pending_disconnect = trigger
                        break
        except (OSError, ValueError):
            pass
        if pending_disconnect is not None:
            pending_disconnect.disconnect()

    def _control(self, req: dict, sock: socket.socket | None = None) -> tuple[dict, FakeDevice | None]:
        """Answer one control request; the device to disconnect when a 'done' trips disconnect_after.
        A simulated bench sleeps here, in this connection's own thread, so devices simulate in parallel."""
        try:
            dev = self.device(req.get("serial", ""))
        except KeyError:
            return {"error": f"unknown device {req.get('serial')!r}"}, None
        op = req.get("op")
        if op == "start":
            return {"style": dev.output_style, "crash": dev.crash_signal_for(req.get("graph", ""))}, None
        if op == "bench":
            if self._runner is None:
                self._runner = load_runner()
            try:
                host, _ = dev.resolve(req["graph"])
            except OSError as e:
                return {"error": str(e)}, None
            simulated_ms = dev.simulated_run_ms(req["graph"])
            dev.begin_run(req["graph"])
            try:
                if simulated_ms is not None:
                    return self._runner.simulate(str(host), req["params"], simulated_ms, self._idle(sock)), None
                return self._runner.measure(str(host), req["params"]), None
            finally:
                dev.end_run()
        if op == "done":
            return {"ok": True}, (dev if dev.note_model_run(req.get("graph", "")) else None)
        return {"error": f"unknown op {op!r}"}, None

    def _idle(self, sock: socket.socket | None) -> Any:
        """A no-CPU sleep for simulated runs: waits on the control socket, so a benchmark_model that
        dies (killed, disconnected, server stopping) ends the simulation at once (RuntimeError)."""
        def sleep(secs: float) -> None:
            if sock is None:
                time.sleep(secs)
                return
            ready, _, _ = select.select([sock], [], [], secs)
            if ready or self._stop.is_set():  # benchmark_model sends nothing while it waits: EOF
                raise RuntimeError("benchmark_model went away during a simulated run")
        return sleep
