"""House style is checked, not hoped for: ruff over the whole repository, the layer's import
boundaries, and the size of its modules."""

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


def test_the_layers_import_boundaries_hold():
    """The contracts in pyproject.toml: who may import whom in the layer (import-linter)."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "layers" / "stream")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


MAX_MODULE_LINES, MAX_CLASS_LINES = 400, 150


def test_no_module_or_class_in_the_layer_or_the_local_stack_outgrows_its_budget():
    """A module over 400 lines or a class over 150 does more than one job: split it."""
    import ast

    too_big = []
    for path in [*(ROOT / "layers").rglob("*.py"), *(ROOT / "devstack").rglob("*.py")]:
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_big.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_CLASS_LINES:
                    too_big.append(f"{path.relative_to(ROOT)}: class {node.name}, {length} lines")
    assert too_big == []


def test_mypy_finds_no_type_error_in_the_layer_the_local_stack_or_the_handlers():
    mypy = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    runs = [mypy] + [
        [*mypy, "--check-untyped-defs", str(app)] for app in sorted(ROOT.glob("functions/*/app.py"))
    ]
    for command in runs:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
