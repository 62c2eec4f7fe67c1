"""The `ai` npm package's own WebSocketChatTransport (ai@7.0.173, in Node) against the local stack:
examples/ai-sdk-chat/test/*.test.mjs, run by node:test with the stack's URL in LLM_STREAM_WS_URL.

Needs Node.js with npm; the example's node_modules come from its package-lock.json (`npm ci`,
run here when they are missing or older than the lockfile).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from devstack.stack import LocalStack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ai-sdk-chat"
NODE_TESTS_TIMEOUT = 900  # seconds; each node test is bounded too (60 s; 120 s for 20 chats)


def npm(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    """Run ``npm args`` in the example; fail the test with npm's output if it fails."""
    executable = shutil.which("npm")
    if executable is None:
        pytest.fail(
            "npm is missing: install Node.js 20+ with npm; the AI SDK tests run the real `ai` "
            "client in Node and build the example page with Vite"
        )
    try:
        done = subprocess.run(
            [executable, *args],
            cwd=EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`npm {' '.join(args)}` took over {timeout} s:\n{exc.stdout}\n{exc.stderr}")
    if done.returncode != 0:
        pytest.fail(
            f"`npm {' '.join(args)}` in {EXAMPLE.relative_to(ROOT)} failed "
            f"({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def npm_installed() -> Path:
    """The example, its node_modules installed from package-lock.json. npm writes
    node_modules/.package-lock.json on every install: a newer lockfile means installing again."""
    lockfile = EXAMPLE / "package-lock.json"
    installed = EXAMPLE / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lockfile.stat().st_mtime:
        npm("ci", "--no-audit", "--no-fund")
    return EXAMPLE


def test_the_ai_sdk_client_streams_stops_resumes_and_fails_cleanly_against_the_local_stack(
    stack: LocalStack,
) -> None:
    npm_installed()
    env = {
        **os.environ,
        "LLM_STREAM_WS_URL": stack.ws_url,
        "LLM_STREAM_MODEL": stack.models()[0],
        "NO_COLOR": "1",
    }
    # The spec reporter names every case, passed or failed; npm test prints it on failure.
    npm("test", timeout=NODE_TESTS_TIMEOUT, env=env)
