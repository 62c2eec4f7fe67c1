"""Cold-start import cost of each handler, from ``python -X importtime`` in fresh interpreters.

Each case runs in a new interpreter with the environment Lambda gives a function (a function
name, so Powertools' Tracer is live, and the handler's directory plus the layer on sys.path,
as in /var/task and /opt/python), and reads the cumulative time of the top-level imports.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from dataclasses import dataclass

from . import LAYER, ROOT
from .report import imports_table

MARK = "-- benchmark mark --"

_FIRST_INVOCATION = f"""
import sys
sys.stderr.write({MARK!r} + "\\n"); sys.stderr.flush()
from aws_lambda_powertools.utilities import parameters
parameters.get_secret = lambda *args, **kwargs: "sk-bench"  # no Secrets Manager call
app._provider()
"""


@dataclass(frozen=True)
class Case:
    label: str
    function: str | None  # the function whose directory is on sys.path, like /var/task
    code: str
    after_mark: bool = False  # the code writes MARK itself (to count only what follows it)


CASES = (
    Case("`import boto3` (baseline)", None, "import boto3"),
    Case("message handler: `import app`", "message", "import app"),
    Case("stream handler: `import app`", "stream", "import app"),
    Case(
        "stream handler: first invocation, building the LLM client "
        "(`_provider()`: openai, Powertools parameters)",
        "stream",
        "import app\n" + _FIRST_INVOCATION,
        after_mark=True,
    ),
)


@dataclass
class ImportTime:
    case: Case
    runs: int
    median_ms: float
    min_ms: float
    modules: int  # modules loaded by the case (median)
    openai_loaded: bool


def lambda_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    env.update(
        AWS_LAMBDA_FUNCTION_NAME="bench-function",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_XRAY_CONTEXT_MISSING="IGNORE_ERROR",
        POWERTOOLS_SERVICE_NAME="llm-stream",
        POWERTOOLS_METRICS_NAMESPACE="LlmStream",
    )
    env.pop("PYTHONPATH", None)
    return env


def parse_importtime(stderr: str) -> tuple[float, int, bool]:
    """After the mark: sum the cumulative µs of top-level imports, count modules, spot openai."""
    lines = stderr.splitlines()
    lines = lines[lines.index(MARK) + 1 :]
    total_us, modules, openai = 0, 0, False
    for line in lines:
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _, _, rest = line.partition("import time:")
        _self_us, cumulative, name = rest.split("|", 2)
        modules += 1
        openai = openai or name.strip().split(".")[0] == "openai"
        if not name.startswith("  "):  # top level: its cumulative covers everything it pulled in
            total_us += int(cumulative)
    return total_us / 1000, modules, openai


def _run_once(case: Case, env: dict[str, str]) -> tuple[float, int, bool]:
    path = [str(LAYER)] + ([str(ROOT / "functions" / case.function)] if case.function else [])
    prelude = f"import sys; sys.path[:0] = {path!r}\n"
    # The interpreter's own start-up imports come before the mark and are not counted.
    mark = f"sys.stderr.write({MARK!r} + '\\n'); sys.stderr.flush()\n"
    code = prelude + (case.code if case.after_mark else mark + case.code)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd="/tmp",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{case.label} failed:\n{done.stderr[-2000:]}")
    return parse_importtime(done.stderr)


def measure(runs: int = 7) -> list[ImportTime]:
    """Median of ``runs`` fresh interpreters per case, cases interleaved so noise hits all alike.

    One discarded round first writes the bytecode caches, as a deployment package would carry.
    """
    env = lambda_env()
    samples: dict[Case, list[tuple[float, int, bool]]] = {case: [] for case in CASES}
    for round_ in range(runs + 1):
        for case in CASES:
            sample = _run_once(case, env)
            if round_:
                samples[case].append(sample)
    out = []
    for case, rows in samples.items():
        times = [ms for ms, _, _ in rows]
        out.append(
            ImportTime(
                case,
                runs,
                statistics.median(times),
                min(times),
                int(statistics.median(n for _, n, _ in rows)),
                any(loaded for _, _, loaded in rows),
            )
        )
    return out


def render_imports(rows: list[ImportTime]) -> list[str]:
    return [
        "## Cold start: import cost",
        "",
        "`python -X importtime` in a fresh interpreter per run, the cumulative time of the "
        "top-level imports, with Lambda's environment (a function name, so Powertools' Tracer "
        "imports the X-Ray SDK as it does in Lambda) and the handler's directory and the layer on "
        "`sys.path`. Bytecode caches are warm (one discarded round first). Median of "
        f"{rows[0].runs if rows else 0} runs, the cases interleaved.",
        "",
        imports_table(rows),
        "",
        "The message handler imports neither openai nor the layer's LLM code (a unit test "
        "holds it to that), so the route that must answer the client at once never waits for "
        "it. The stream handler imports openai on its first invocation, once per container "
        "(`_provider()`, cached; `tests/unit/test_cold_start.py` holds it to that): the last row "
        "is paid by the first prompt a container streams, after the client already has its "
        "`accepted` frame. About two thirds of each handler's own import sits under "
        "`aws_xray_sdk.core` (Powertools' Tracer, for active tracing; it also brings botocore "
        "in, and ~90 ms of it is the SDK's own patching).",
        "",
    ]
