"""Holder of one stand-in device's private mount namespace (run as a child process, stdlib only).

It unshares a mount namespace, binds the host directories the device shell needs READ-ONLY into
the device root, binds the fake sysfs trees over /sys/devices/system/cpu and /sys/class/thermal,
chroots into the device root, prints "ready" and waits until its stdin closes. Device commands then
join it with `nsenter --target PID --mount --root --wd`, so they see the device's /data/local/tmp
and never the host's. Usage: python3 -I -S nsroot.py SPEC.json
"""
from __future__ import annotations

import ctypes
import json
import os
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = -100, 0x8000, 1
SYS_MOUNT_SETATTR = 442  # same number on x86_64 and the generic (arm64) syscall table

libc = ctypes.CDLL(None, use_errno=True)


class MountAttr(ctypes.Structure):
    """struct mount_attr of mount_setattr(2)."""

    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _check(rc: int, what: str) -> None:
    """Raise OSError with errno when a libc call failed."""
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src: str | None, target: str, flags: int) -> None:
    """mount(2) without a file system type or data (binds, remounts, propagation changes)."""
    rc = libc.mount(src.encode() if src else None, target.encode(), None, ctypes.c_ulong(flags), None)
    _check(rc, f"mount {src or ''} {target}")


def _mounts_under(path: str) -> list[tuple[str, int]]:
    """Mount points at or below path with their nosuid/nodev/noexec flags (from mountinfo)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mp = fields[4].encode().decode("unicode_escape")
            if mp == path or mp.startswith(path.rstrip("/") + "/"):
                opts = set(fields[5].split(","))
                flags = ((MS_NOSUID if "nosuid" in opts else 0) | (MS_NODEV if "nodev" in opts else 0)
                         | (MS_NOEXEC if "noexec" in opts else 0))
                out.append((mp, flags))
    return out


def make_readonly(path: str) -> None:
    """Make the mount at path and every mount below it read-only."""
    attr = MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    rc = libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), path.encode(),
                      ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    if rc == 0:
        return
    for mp, flags in _mounts_under(path):  # kernels before 5.12: one remount per mount
        mount(None, mp, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def setup(spec: dict) -> None:
    """Build the device's view: read-only host binds, symlinks, writable fake sysfs, then chroot."""
    root = spec["root"]
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount(None, "/", MS_REC | MS_PRIVATE)
    for name in spec["binds"]:
        target = os.path.join(root, name)
        os.makedirs(target, exist_ok=True)
        mount("/" + name, target, MS_BIND | MS_REC)
        make_readonly(target)
    for src, dst, writable in spec["overlays"]:
        target = os.path.join(root, dst.lstrip("/"))
        mount(src, target, MS_BIND)
        if not writable:
            mount(None, target, MS_REMOUNT | MS_BIND | MS_RDONLY)
    os.chroot(root)
    os.chdir("/")


def main() -> int:
    """Set up the namespace, report ready (or the error) on stdout, then hold it until stdin closes."""
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        setup(spec)
    except OSError as e:
        print(f"error: {e}", flush=True)
        return 1
    print("ready", flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
