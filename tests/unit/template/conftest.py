"""The template as the tests read it: through devstack.template, the loader the local stack
uses; and, for the SAM tests, the CloudFormation the SAM transform makes of it."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from devstack.template import TEMPLATE, load

from .cfn import TRANSLATE, sam_cli, sam_env, samtranslator_python


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="session")
def synthesized() -> dict[str, Any]:
    """The CloudFormation that the SAM transform makes of template.yaml."""
    python = samtranslator_python()
    if python is None:
        sam_cli()  # skips when sam is missing
        pytest.skip("samtranslator is importable neither here nor from the SAM CLI's interpreter")
    run = subprocess.run(
        [python, "-c", TRANSLATE, str(TEMPLATE)],
        env=sam_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)
