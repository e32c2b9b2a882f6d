"""The README's commands, run as written, in order, in an empty folder.

The quick start's two commands are the demo and this suite itself (CI runs the second, the demo
has its own test); every other ``bash`` block and the Python example must run unchanged.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def sections() -> list[tuple[str, str, str]]:
    """``(section title, language, code)`` of every fenced block."""
    text = README.read_text()
    found = []
    for match in FENCE.finditer(text):
        titles = re.findall(r"^## (.+)$", text[:match.start()], re.MULTILINE)
        found.append((titles[-1] if titles else "", match[1], match[2]))
    return found


def commands(code: str) -> list[str]:
    """The command lines of a bash block: continuations joined, comments and blanks dropped."""
    joined = code.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_the_readme_has_the_two_quick_start_commands() -> None:
    quick = [cmd for title, lang, code in sections() if title == "Quick start" and lang == "bash"
             for cmd in commands(code)]
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert len(quick) == 2 and quick[1] == ci


@pytest.mark.slow
@pytest.mark.timeout(2700)  # about 50 commands, three fine-tunes among them: 9 minutes on 2 cores
def test_every_readme_command_runs_as_written(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SQLVISION_DB"}
    bin_dir = Path(sys.executable).parent  # the sqlvision script of this environment
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    ran = 0
    for title, lang, code in sections():
        if title == "Quick start":
            continue
        if lang == "bash":
            for command in commands(code):
                done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env,
                                      capture_output=True, text=True, timeout=900, check=False)
                assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
                ran += 1
        elif lang == "python":
            done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=600, check=False)
            assert done.returncode == 0, f"{code}\n{done.stderr[-2000:]}"
            ran += 1
    assert ran >= 30
