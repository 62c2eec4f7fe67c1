"""StreamLayer is built by layers/stream/Makefile: for each Architecture the template allows,
sam build finds a Makefile entry (the layer's ContextPath) that asks pip for wheels of that
architecture and the runtime's Python, and compiles their bytecode. (test_lint.py's sam build
test checks what the build holds.)"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devstack.template import Template

from .cfn import ROOT

MACHINES = {"arm64": "aarch64", "x86_64": "x86_64"}


def dry_run(makefile: Path, tmp_path: Path) -> str:
    """The commands ``sam build`` would run for the layer, as make prints them."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not on PATH (sam build needs it for the layer)")
    run = subprocess.run(
        [make, "-n", "--makefile", str(makefile), "build-StreamLayer"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "ARTIFACTS_DIR": str(tmp_path / "StreamLayer")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


@pytest.mark.parametrize("architecture", sorted(MACHINES))
def test_each_architecture_has_a_makefile_entry_that_asks_pip_for_its_own_wheels(
    architecture: str, template: dict[str, Any], tmp_path: Path
) -> None:
    assert architecture in template["Parameters"]["Architecture"]["AllowedValues"]
    layer = template["Resources"]["StreamLayer"]
    # SAM resolves the Metadata with the parameters, as this does.
    resolved = Template(parameters={"Architecture": architecture}).resolve(layer["Metadata"])
    assert resolved["BuildMethod"] == "makefile"
    assert resolved["BuildArchitecture"] == architecture
    makefile = ROOT / resolved["ContextPath"] / "Makefile"
    assert makefile.is_file(), makefile

    printed = dry_run(makefile, tmp_path).replace("\\\n", " ")  # one line per command
    commands = [" ".join(line.split()) for line in printed.splitlines()]
    [pip] = [line for line in commands if " -m pip install " in line]
    platforms = [word for word in pip.split() if word.startswith("manylinux")]
    assert platforms and all(p.endswith("_" + MACHINES[architecture]) for p in platforms), pip
    for flag in ("--only-binary=:all:", "--implementation cp", "--python-version 3.13"):
        assert flag in pip, flag
    [compile_all] = [line for line in commands if " -m compileall " in line]
    assert (
        compile_all.startswith("python3.13 ")
        and "--invalidation-mode unchecked-hash" in compile_all
    )


def test_an_architecture_the_makefile_does_not_know_fails_the_build(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not on PATH")
    run = subprocess.run(
        [make, "--makefile", str(ROOT / "layers/stream/Makefile"), "build-StreamLayer"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "ARTIFACTS_DIR": str(tmp_path), "ARCH": "sparc"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and "ARCH must be arm64 or x86_64" in run.stdout + run.stderr
