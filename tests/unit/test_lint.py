"""House style is checked, not hoped for: ruff over the whole repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_changes_nothing():
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_test_the_docs_cite_exists():
    import re

    defined = {
        name
        for path in (ROOT / "tests").rglob("test_*.py")
        for name in re.findall(r"^def (test_\w+)", path.read_text(), re.MULTILINE)
    }
    docs = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    cited = {
        (doc.name, name) for doc in docs for name in re.findall(r"::(test_\w+)", doc.read_text())
    }
    assert len(cited) > 50  # the reliability tables cite tests by name
    assert {(doc, name) for doc, name in cited if name not in defined} == set()
