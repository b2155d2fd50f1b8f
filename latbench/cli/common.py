"""What the command modules share: the two consoles (data on stdout, the rest on stderr) and how
sizes and resolutions are written."""
from __future__ import annotations

from rich.console import Console


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)



def format_size(size: int) -> str:
    """Subnet count as text: exact when small, scientific notation when huge."""
    return f"{size:,}" if size < 10**6 else f"{float(size):.2e}"


def format_resolutions(res) -> str:
    """`128..224 step 4 (25)` for an even range, else the values themselves."""
    res = list(res)
    if not res:
        return "-"
    steps = {b - a for a, b in zip(res, res[1:])}
    if len(res) > 3 and len(steps) == 1:
        return f"{res[0]}..{res[-1]} step {steps.pop()} ({len(res)})"
    return ", ".join(str(r) for r in res)

