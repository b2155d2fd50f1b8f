"""The README's "Python API" section runs: its ```python blocks, in order, as one script in a
fresh directory (executed in this process: the modules it imports are loaded once per session)."""
from __future__ import annotations

import contextlib
import io
import re

from conftest import ROOT


def python_api_blocks(text: str) -> list[str]:
    """The ```python blocks between the "## Python API" heading and the next "## " heading."""
    start = text.index("\n## Python API\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else None]
    return re.findall(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)


def test_python_api_section_runs(tmp_path, monkeypatch) -> None:
    blocks = python_api_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 5 and any("Study(" in b for b in blocks) and any("latbench.search(" in b for b in blocks)
    script = "\n".join(blocks)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(script, "README.md (Python API)", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "tiny-ort.sqlite").is_file() and (tmp_path / "model-ort.sqlite").is_file()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("24 ops measured") and "Sequential" in out.getvalue(), out.getvalue()
