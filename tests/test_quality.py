"""The code stays clean: ruff and mypy, as configured in pyproject.toml, pass on the project.

Their caches go to a temporary folder, never into the checkout: the suite leaves
``git status`` (ignored files included) as it found it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing(tmp_path: Path) -> None:
    result = _run("ruff", "check", "--cache-dir", str(tmp_path), "notifier", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(tmp_path.iterdir()), "ruff kept its cache in the temporary folder"


def test_mypy_strict_finds_nothing(tmp_path: Path) -> None:
    result = _run("mypy", "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(tmp_path.iterdir()), "mypy kept its cache in the temporary folder"
