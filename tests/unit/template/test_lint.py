"""template.yaml is valid: cfn-lint and `sam validate --lint` pass, the SAM transform takes it,
`sam build` builds it, and the loader reads it as cfn-lint does.

The tests marked ``sam`` need the AWS SAM CLI on PATH (and python3.13 for ``sam build``); they
are skipped, with the reason shown, only when ``sam`` cannot be found.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode

from devstack.template import TEMPLATE, load

from .cfn import ROOT, cfn_lint_cli, functions, sam_cli, sam_env


def test_template_passes_cfn_lint_with_no_findings() -> None:
    run = subprocess.run(
        [cfn_lint_cli(), str(TEMPLATE)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr


EXAMPLE_TEMPLATES = sorted((ROOT / "examples").glob("*/template.yaml"))


@pytest.mark.parametrize("example", EXAMPLE_TEMPLATES, ids=lambda p: p.parent.name)
def test_each_examples_template_passes_cfn_lint_and_the_loader_reads_it_as_cfn_lint_does(
    example: Path,
) -> None:
    # examples/custom-handler deploys beside this stack: it must lint as clean as the stack.
    run = subprocess.run(
        [cfn_lint_cli(), str(example)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr
    decoded, matches = decode(str(example))
    assert not matches, [str(m) for m in matches]
    assert json.loads(json.dumps(decoded)) == json.loads(json.dumps(load(example)))


def test_the_loader_reads_the_template_as_cfn_lint_does(template: dict[str, Any]) -> None:
    # The tests and the local stack read template.yaml through devstack.template.
    decoded, matches = decode(str(TEMPLATE))
    assert not matches, [str(m) for m in matches]
    assert json.loads(json.dumps(decoded)) == json.loads(json.dumps(template))


@pytest.mark.sam
def test_sam_validate_lint_passes() -> None:
    run = subprocess.run(
        [sam_cli(), "validate", "--lint", "--template-file", str(TEMPLATE)],
        cwd=ROOT,
        env=sam_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.sam
def test_sam_transform_accepts_the_template_and_its_output_lints_clean(
    synthesized: dict[str, Any], tmp_path: Path
) -> None:
    # cfn-lint and `sam validate --lint` check SAM resources against a schema; only the real
    # transform catches what it refuses (e.g. two policy types in one Fn::If).
    out = tmp_path / "synthesized.json"
    out.write_text(json.dumps(synthesized))
    run = subprocess.run(
        # W2001: SAM inlines the defaults of the EventInvokeConfig parameters.
        [cfn_lint_cli(), "--ignore-checks", "W2001", "--", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.sam
def test_sam_build_succeeds_and_the_layer_holds_llmstream_for_the_target_architecture(
    tmp_path: Path, template: dict[str, Any], record_property: Any
) -> None:
    sam = sam_cli()
    assert shutil.which("python3.13"), "sam build needs python3.13 on PATH (see the Makefile)"
    build = tmp_path / "build"
    started = time.monotonic()
    run = subprocess.run(
        [
            sam,
            "build",
            "--template-file",
            str(TEMPLATE),
            "--build-dir",
            str(build),
            # samconfig.toml turns caching on; cached builds keep dependencies in ./.aws-sam.
            "--no-cached",
        ],
        cwd=ROOT,
        env=sam_env(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    elapsed = time.monotonic() - started
    record_property("sam_build_seconds", round(elapsed, 1))
    print(f"sam build took {elapsed:.1f}s")
    assert run.returncode == 0, run.stdout + run.stderr

    for name in functions(template):
        assert (build / name).is_dir(), f"{name} was not built"
    layer = build / "StreamLayer" / "python"
    for module in ("core/protocol", "core/envelope", "core/settings", "stream/worker"):
        assert (layer / "llmstream" / f"{module}.py").is_file()

    # Bytecode for the runtime's Python (/opt is read-only: Lambda could not write it), checked
    # by hash only, since /opt's timestamps mean nothing; and none for another Python.
    for package in ("llmstream", "llmstream/core", "llmstream/intake", "boto3", "botocore"):
        sources = sorted((layer / package).glob("*.py"))
        assert sources, package
        for source in sources:
            pyc = source.parent / "__pycache__" / f"{source.stem}.cpython-313.pyc"
            assert pyc.is_file(), f"no bytecode for {source.relative_to(layer)}"
            flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
            assert flags == 0b01, f"{pyc.name}: not unchecked-hash (flags {flags:#b})"
    stray = [p.name for p in layer.rglob("*.pyc") if not p.name.endswith(".cpython-313.pyc")]
    assert not stray, stray[:5]
    assert not (layer / "bin").exists(), "console scripts name the build machine's interpreter"

    # Native wheels must match the architecture the functions run on, and Python 3.13.
    arch = {"arm64": "aarch64", "x86_64": "x86_64"}[
        template["Parameters"]["Architecture"]["Default"]
    ]
    native = [so.name for so in layer.rglob("*.so") if "-linux-gnu" in so.name]
    assert native, "expected compiled extensions (pydantic-core, jiter) in the layer"
    wrong = [so for so in native if arch not in so or "cpython-313" not in so]
    assert not wrong, wrong
    for wheel in layer.glob("*.dist-info/WHEEL"):
        for tag in re.findall(r"^Tag: (\S+)$", wheel.read_text(), re.M):
            python_tag, abi, platform = tag.split("-", 2)
            if platform != "any":
                assert arch in platform, f"{wheel.parent.name}: {tag}"
            if abi.startswith("cp"):
                assert abi == "cp313", f"{wheel.parent.name}: {tag}"
