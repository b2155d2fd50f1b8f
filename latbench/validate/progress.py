"""Progress callbacks of the end-to-end measurements: progress(task, done, total); the CLI draws
bars from it, the library never prints."""
from __future__ import annotations

from typing import Callable

Progress = Callable[[str, int, int], None]


def quiet(task: str, done: int, total: int) -> None:
    """The default progress callback: nothing."""
