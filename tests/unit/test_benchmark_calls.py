"""The AWS-calls benchmark section: it counts a whole answer's calls, and the docs show them."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

from benchmarks.calls import AnswerCalls, CallsResult
from benchmarks.config import QUICK
from benchmarks.document import render

ROOT = Path(__file__).resolve().parents[2]


def per_operation(markdown: str) -> dict[str, dict[str, int]]:
    """The per-operation table: answer kind -> operation -> calls."""
    lines = markdown.split("Per operation:")[1].strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], map(int, cells[1:]), strict=True))
    return rows


def test_each_answer_kind_is_counted_from_its_connect_to_its_disconnect():
    """Tiny answers through a real local stack, in a process of its own (the handlers run in it,
    with their module caches, which this test process's other tests have filled)."""
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.calls", "--tokens", "5", "--rate", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "## AWS calls per answer" in run.stdout and "Pending / failed" not in run.stdout
    rows = per_operation(run.stdout)
    assert set(rows) == {"plain", "resumable", "with a conversation"}
    for calls in rows.values():
        assert calls["PutItem"] >= 1 and calls["DeleteItem"] == 1  # $connect's and $disconnect's
        assert calls["Publish (SNS)"] == 1 and calls["DeleteConnection (API GW)"] == 1
        assert calls["PostToConnection (API GW)"] >= 3  # start, a delta, end
    assert rows["with a conversation"]["Query"] >= 1 and rows["plain"].get("Query", 0) == 0
    assert rows["resumable"]["BatchWriteItem"] >= 1  # its frames, stored when it ends


def test_the_document_shows_the_calls_and_checks_the_plain_answers_targets():
    def plain(updates: int) -> AnswerCalls:
        counts = {
            ("dynamodb", "PutItem"): 2,
            ("dynamodb", "UpdateItem"): updates,
            ("dynamodb", "DeleteItem"): 1,
            ("dynamodb", "GetItem"): 6,
            ("sns", "Publish"): 1,
        }
        return AnswerCalls("plain", counts, cancel_polls=5, complete=True, stream_ms=1200)

    def document(updates: int) -> str:
        result = CallsResult([plain(updates)], poll_ms=150)
        when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        parts = {"calls": result}
        return render(QUICK, parts, when=when, load=0.0, elapsed=1.0, plot_name=None)

    within = document(updates=4)
    assert "## AWS calls per answer" in within and "sets **150 ms**" in within
    assert "| DynamoDB writes ≤ 7 | 7 | ✅ |" in within
    assert "| DynamoDB reads ≤ the cancel poll + 2 | 5 + 1 | ✅ |" in within
    assert "| plain | **7** | 5 + **1** | 14 |" in within
    assert "| DynamoDB writes ≤ 7 | 8 | ❌ |" in document(updates=5)
