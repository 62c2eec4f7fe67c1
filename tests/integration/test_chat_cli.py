"""The terminal chat client (``python -m devstack chat``) against the local stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devstack import chat
from devstack.stack import LocalStack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def tokens(n: int) -> str:
    """What the mock LLM streams for ``#mock tokens=n``."""
    return "".join(f"t{i} " for i in range(n))


def test_once_streams_the_answer_and_exits_0_after_end(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    status = chat.main(["--url", stack.ws_url, "--once", "Hello\n#mock tokens=12 rate=200"])

    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith(tokens(12) + "\n(tokens: ")
    assert out.endswith(" / 12 out)\n")


def test_once_exits_1_and_prints_the_error_when_the_model_fails(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    status = chat.main(["--url", stack.ws_url, "--once", "#mock tokens=10 rate=200 fail_after=3"])

    assert status == 1
    assert capsys.readouterr().out.startswith(tokens(3) + "\nerror [llm_error]: ")


def test_once_exits_1_on_a_rejected_prompt_although_the_socket_stays_open(
    stack: LocalStack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert chat.main(["--url", stack.ws_url, "--once", "x" * 17_000]) == 1
    assert capsys.readouterr().out.startswith("error [payload_too_large]: ")


def test_piped_prompts_each_get_an_answer_over_a_fresh_connection(stack: LocalStack) -> None:
    prompts = "#mock tokens=3 rate=0\n#mock tokens=4 rate=0\n"

    done = subprocess.run(
        [sys.executable, "-m", "devstack", "chat", "--url", stack.ws_url],
        input=prompts,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )

    assert done.returncode == 0, done.stderr
    answers = [line for line in done.stdout.splitlines() if line.startswith("t0")]
    assert answers == [tokens(3), tokens(4)]
