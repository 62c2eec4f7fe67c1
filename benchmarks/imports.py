"""Cold start: what each handler's import costs on the built artifact (``sam build``'s
.aws-sam/build) in the Lambda runtime's Python, python3.13, with the layer's bytecode and without
it, against a bare ``import boto3`` in the same interpreter.

Each case runs in a fresh interpreter with the environment Lambda gives the function (its
template environment and a function name, so Powertools' Tracer is live wherever a handler builds
it) and, as /var/task and /opt/python are, the function's built folder and the layer's python/
first on sys.path. ``-X importtime`` gives the cumulative time of the top-level imports. *Without
bytecode* runs a copy of the build with every __pycache__ removed, which is what a layer without
.pyc files costs on Lambda's read-only /opt; no run writes bytecode (``-B``).
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import ROOT
from .report import mark, table

MARK = "-- benchmark mark --"
BUILD = ROOT / ".aws-sam" / "build"
LAYER = Path("StreamLayer") / "python"  # in the build
BUDGET = 1.3
"""Most a route handler's or the authorizer's import may cost, in bare ``import boto3``s."""
MODES = ("without", "with")  # bytecode

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
    function: str | None  # the function's logical ID (its built folder is /var/task); None: boto3
    code: str
    after_mark: bool = False  # the code writes MARK itself (to count only what follows it)
    budget: bool = False  # held to BUDGET


CASES = (
    Case("`import boto3` (baseline)", None, "import boto3"),
    Case("message handler", "MessageFunction", "import app", budget=True),
    Case("connect handler", "ConnectFunction", "import app", budget=True),
    Case("disconnect handler", "DisconnectFunction", "import app", budget=True),
    Case("authorizer", "AuthorizerFunction", "import app", budget=True),
    Case("stream handler", "StreamFunction", "import app"),
    Case("dead-letter handler", "DeadLetterFunction", "import app"),
    Case(
        "stream handler's first invocation, building the LLM client "
        "(`_provider()`: openai, Powertools parameters)",
        "StreamFunction",
        "import app\n" + _FIRST_INVOCATION,
        after_mark=True,
    ),
)


@dataclass(frozen=True)
class Sample:
    ms: float
    modules: int
    packages: frozenset[str]  # top-level packages imported


@dataclass
class Row:
    case: Case
    median_ms: dict[str, float]  # by mode
    modules: int
    packages: frozenset[str]
    round_ratios: dict[str, list[float]] = field(default_factory=dict)
    """By mode: each round's time of this case over the baseline's in the same round. Their
    median is the ratio, so that a slow spell of the machine, which slows both, cancels out;
    their quartiles say how noisy the rounds were."""

    def ratio(self, mode: str, baseline: Row) -> float:
        if self.round_ratios.get(mode):
            return statistics.median(self.round_ratios[mode])
        return self.median_ms[mode] / baseline.median_ms[mode]


@dataclass
class ColdStart:
    rows: list[Row]
    runs: int
    python: str  # the interpreter's version
    build: str  # how the build was made
    when: dt.datetime
    load: float
    notes: list[str] = field(default_factory=list)

    @property
    def baseline(self) -> Row:
        return next(r for r in self.rows if r.case.function is None)

    def within_budget(self, row: Row) -> bool:
        return row.ratio("with", self.baseline) <= BUDGET


# ---------------------------------------------------------------------------- tools


def python313() -> str | None:
    """The Lambda runtime's Python here: $PY313, python3.13 on PATH, or pyenv's."""
    candidates = [os.environ.get("PY313"), shutil.which("python3.13")]
    home = os.path.expanduser("~")
    candidates += sorted(glob.glob(f"{home}/.pyenv/versions/3.13*/bin/python3.13"), reverse=True)
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "3.13":
            return candidate
    return None


def sam_cli() -> str | None:
    beside = ROOT / ".venv-sam" / "bin" / "sam"
    return str(beside) if beside.exists() else shutil.which("sam")


def host_architecture() -> str:
    """This machine's CPU as the template's Architecture parameter names it."""
    machine = platform.machine().lower()
    return {"aarch64": "arm64", "amd64": "x86_64"}.get(machine, machine)


def build(python: str, progress: Callable[[str], None]) -> tuple[Path, str]:
    """``sam build`` as ``make build`` runs it (samconfig.toml: cached, parallel), into BUILD;
    for this machine's architecture if the template's default is another, whose native
    extensions would not load here (into a folder of its own, leaving BUILD alone)."""
    from devstack.template import Template

    arch, default = host_architecture(), Template().parameters["Architecture"]
    out, args = BUILD, ["build"]
    if arch != default:
        out = BUILD.with_name(f"build-{arch}")
        overrides = ["--parameter-overrides", f"Architecture={arch}", "--no-cached"]
        args += [*overrides, "--build-dir", str(out)]
    how = "`sam build`, run for this measurement"
    if arch != default:
        how = (
            f"`sam build --parameter-overrides Architecture={arch}`, run for this measurement "
            f"(this machine's CPU; the template's default, {default}, differs in the native "
            "extensions only)"
        )
    sam = sam_cli()
    if sam is None:
        if arch == default and (BUILD / LAYER).is_dir():
            return BUILD, "the existing .aws-sam/build (no SAM CLI found to rebuild it)"
        raise RuntimeError(f"no SAM CLI to build the template for {arch}: run `make build`")
    progress(f"cold start: sam build ({arch})")
    env = dict(os.environ, SAM_CLI_TELEMETRY="0")
    env["PATH"] = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    done = subprocess.run([sam, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sam build failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return out, how


def without_bytecode(build_dir: Path, into: Path) -> Path:
    """A copy of the layer and the functions of ``build_dir`` with no .pyc files."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for case in CASES:
        if case.function and not (into / case.function).exists():
            shutil.copytree(build_dir / case.function, into / case.function, ignore=skip)
    shutil.copytree(build_dir / LAYER, into / LAYER, ignore=skip)
    return into


# ---------------------------------------------------------------------------- measuring


def lambda_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_"))}
    env.update(
        AWS_LAMBDA_FUNCTION_NAME="bench-function",
        AWS_EXECUTION_ENV="AWS_Lambda_python3.13",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_XRAY_CONTEXT_MISSING="IGNORE_ERROR",
        POWERTOOLS_SERVICE_NAME="llm-stream",
        POWERTOOLS_METRICS_NAMESPACE="LlmStream",
    )
    for name in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX"):
        env.pop(name, None)
    return env


def function_env(function: str | None) -> dict[str, str]:
    """Lambda's environment for the function: the template's variables (AuthMode hmac, so that
    the authorizer exists), over lambda_env()."""
    env = lambda_env()
    if function:
        from devstack.template import Template

        env.update(Template(parameters={"AuthMode": "hmac"}).environment(function))
        env["AWS_LAMBDA_FUNCTION_NAME"] = function
    return env


def parse_importtime(stderr: str) -> tuple[float, int, bool]:
    """After the mark: sum the cumulative µs of top-level imports, count modules, spot openai."""
    total_us, modules, packages = _parse(stderr)
    return total_us / 1000, modules, "openai" in packages


def _parse(stderr: str) -> tuple[int, int, set[str]]:
    lines = stderr.splitlines()
    lines = lines[lines.index(MARK) + 1 :]
    total_us, modules, packages = 0, 0, set()
    for line in lines:
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _, _, rest = line.partition("import time:")
        _self_us, cumulative, name = rest.split("|", 2)
        modules += 1
        packages.add(name.strip().split(".")[0])
        if not name.startswith("  "):  # top level: its cumulative covers everything it pulled in
            total_us += int(cumulative)
    return total_us, modules, packages


def _run_once(python: str, case: Case, build_dir: Path, env: dict[str, str]) -> Sample:
    path = ([str(build_dir / case.function)] if case.function else []) + [str(build_dir / LAYER)]
    prelude = f"import sys; sys.path[:0] = {path!r}\n"
    # The interpreter's own start-up imports come before the mark and are not counted.
    mark_line = f"sys.stderr.write({MARK!r} + '\\n'); sys.stderr.flush()\n"
    code = prelude + (case.code if case.after_mark else mark_line + case.code)
    done = subprocess.run(
        [python, "-I", "-B", "-X", "importtime", "-c", code],
        cwd=tempfile.gettempdir(),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{case.label} failed:\n{done.stderr[-2000:]}")
    total_us, modules, packages = _parse(done.stderr)
    return Sample(total_us / 1000, modules, frozenset(packages))


def measure(
    runs: int = 7,
    *,
    build_dir: Path | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> ColdStart | None:
    """Median of ``runs`` fresh interpreters per case and mode, all interleaved so that noise
    hits them alike, after one discarded round that warms the file cache.

    Without ``build_dir``, measures what ``sam build`` makes of the template now. None when there
    is no python3.13 to run it with.
    """
    python = python313()
    if python is None:
        progress("cold start: skipped, no python3.13 (the Lambda runtime's Python) found")
        return None
    started = dt.datetime.now(dt.UTC)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    if build_dir is None:
        build_dir, how = build(python, progress)
    else:
        how = f"the build in {build_dir}"
    version = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    envs = {case: function_env(case.function) for case in CASES}
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        dirs = {"with": build_dir, "without": without_bytecode(build_dir, Path(tmp))}
        samples: dict[tuple[Case, str], list[Sample]] = {(c, m): [] for c in CASES for m in MODES}
        progress(f"cold start: {runs} fresh python{version} processes per case and mode")
        for round_ in range(runs + 1):
            for mode in MODES:
                for case in CASES:
                    sample = _run_once(python, case, dirs[mode], envs[case])
                    if round_:
                        samples[case, mode].append(sample)
    rows = []
    baseline = next(c for c in CASES if c.function is None)
    for case in CASES:
        with_bytecode = samples[case, "with"]
        rows.append(
            Row(
                case,
                {m: statistics.median(s.ms for s in samples[case, m]) for m in MODES},
                int(statistics.median(s.modules for s in with_bytecode)),
                frozenset().union(*(s.packages for s in with_bytecode)),
                round_ratios={
                    m: [
                        s.ms / b.ms
                        for s, b in zip(samples[case, m], samples[baseline, m], strict=True)
                    ]
                    for m in MODES
                },
            )
        )
    return ColdStart(rows, runs, version, how, started, load)


def quartiles(values: list[float]) -> tuple[float, float]:
    """The first and third quartiles of one or more values."""
    if len(values) < 2:
        return values[0], values[0]
    first, _median, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, third


# ---------------------------------------------------------------------------- the document


def cold_start_table(result: ColdStart) -> str:
    base = result.baseline
    out = []
    for r in result.rows:
        saved = 1 - r.median_ms["with"] / r.median_ms["without"]
        out.append(
            [
                r.case.label,
                f"{r.median_ms['without']:.0f}",
                f"{r.ratio('without', base):.2f}×",
                f"**{r.median_ms['with']:.0f}**",
                f"**{r.ratio('with', base):.2f}×**",
                f"{saved:.0%}",
                str(r.modules),
                "–" if r.case.after_mark else "yes" if "aws_xray_sdk" in r.packages else "no",
                mark(result.within_budget(r)) if r.case.budget else "–",
            ]
        )
    return table(
        [
            "what is imported",
            "no bytecode: median ms",
            "vs `import boto3`",
            "with bytecode: median ms",
            "vs `import boto3`",
            "bytecode saves",
            "modules",
            "X-Ray SDK loaded",
            f"≤ {BUDGET}× `import boto3`",
        ],
        out,
    )


def _spread(row: Row) -> str:
    """How far its rounds' ratios strayed: this machine's noise, next to the median."""
    if not row.round_ratios.get("with"):
        return ""
    first, third = quartiles(row.round_ratios["with"])
    return f" (half of the rounds between {first:.2f}× and {third:.2f}×)"


def render_imports(result: ColdStart | None) -> list[str]:
    head = ["## Cold start: import cost", ""]
    if result is None:
        return [*head, "(not run: no python3.13, the Lambda runtime's Python, on this machine)", ""]
    budgeted = [r for r in result.rows if r.case.budget]
    met = all(result.within_budget(r) for r in budgeted)
    worst = max(budgeted, key=lambda r: r.ratio("with", result.baseline))
    return [
        *head,
        f"Run {result.when:%Y-%m-%d %H:%M} UTC, apart from the rest of this page, with Python "
        f"{result.python} (the runtime's version) on {result.build}; load average "
        f"{result.load:.1f} at the start.",
        "",
        "Each case is imported in a fresh interpreter with the function's environment from "
        "template.yaml and a function name (so Powertools' Tracer is live where a handler "
        "builds it), and the function's built folder and the layer's `python/` first on "
        "`sys.path`, as `/var/task` and `/opt/python` are in Lambda. The figure is `python -X "
        "importtime`'s cumulative time of the top-level imports. *No bytecode* is a copy of the "
        "build without its `.pyc` files, what every cold start paid while the layer shipped "
        "none (Lambda mounts `/opt` read-only, so nothing is ever cached there); *with "
        "bytecode* is the layer as `sam build` makes it now. Ratios are against `import boto3` "
        f"from the same layer in the same mode, paired: each round runs every case once, and a "
        "ratio is the median over the rounds of the case's time over the baseline's in that "
        f"round. Median of {result.runs} runs per case and mode, all interleaved, after one "
        "discarded round.",
        "",
        cold_start_table(result),
        "",
        f"{mark(met)} The route handlers and the authorizer, as deployed (with bytecode), "
        f"import in at most {BUDGET}× `import boto3`: the slowest, the {worst.case.label}, in "
        f"{worst.ratio('with', result.baseline):.2f}×{_spread(worst)}. They do not build "
        "Powertools' Tracer, which loads and patches the X-Ray SDK "
        "(`tests/unit/test_cold_start.py` holds them to that); Lambda's active tracing still "
        "records them, and botocore forwards the trace "
        "header, so a prompt's trace runs on through SNS to the stream function. The stream "
        "and dead-letter handlers keep Tracer for their calls' subsegments. The stream "
        "handler imports openai on its first invocation, once per container (the last row), "
        "after the client already has its `accepted` frame.",
        "",
    ]
