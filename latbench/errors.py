"""Typed exceptions: library code raises these; only the CLI turns them into one line and an exit code."""
from __future__ import annotations


class LatbenchError(Exception):
    """Base of every latbench error; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(LatbenchError):
    """The user asked for something that does not exist or does not fit (unknown space, bad flag)."""

    exit_code = 2


class SpaceError(LatbenchError):
    """A search space definition (built-in or YAML) is malformed."""


class ConfigError(UsageError):
    """A subnet config does not belong to its space (a usage error, as a bad `-r` is)."""


class OpError(LatbenchError):
    """An OpSpec is inconsistent (e.g. groups that do not divide the channels)."""


class FormatError(LatbenchError):
    """A file in a foreign format (op list, table, YAML) cannot be read; the message names file and line."""


class TableError(LatbenchError):
    """A table file cannot be read or written (permissions, read-only file system, damage); the
    message names the file and why."""


class MissingExtraError(LatbenchError):
    """An optional backend is not installed; the message names the pip extra."""


class DeviceUnavailableError(LatbenchError):
    """A device or runtime cannot be reached."""

    exit_code = 4


def require(module: str, extra: str):
    """Import an optional dependency or raise a one-line error naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingExtraError(
            f"{module} is not installed: pip install 'latbench[{extra}]' ({e})"
        ) from None
