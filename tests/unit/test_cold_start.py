"""The stream handler's cold start: openai comes with the first invocation, once, not at init."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

# Runs in a fresh interpreter: this test process may have imported openai already.
PROBE = """
import json, sys
sys.path[:0] = ['layers/stream', '.']
from tests.conftest import load_handler

def llm_modules():
    return sorted(m for m in sys.modules if m.split('.')[0] in ('openai', 'httpx', 'httpx2'))

app = load_handler('stream')
at_import = llm_modules()

from aws_lambda_powertools.utilities import parameters
parameters.get_secret = lambda *args, **kwargs: 'sk-test'  # no Secrets Manager here
first = app._provider()
after_first = llm_modules()
same = app._provider() is first
print(json.dumps({'at_import': at_import, 'after_first': after_first, 'same': same}))
"""


def probe() -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_stream_handler_does_not_import_openai_until_the_first_invocation(aws):
    """(``aws`` sets the environment the handler requires; the probe runs in a subprocess.)"""
    seen = probe()
    assert seen["at_import"] == [], "the LLM client must not be imported during init"
    assert "openai" in seen["after_first"], "the first invocation builds the client"
    assert seen["same"], "the client is built once per container and reused"
