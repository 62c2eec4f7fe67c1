"""Runs the chosen sections and writes docs/benchmarks.md from what they measured."""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import LAG_BUDGET_MS, MESSAGE_PRICE_PER_MILLION, Config
from .delivery import Scenario, run_all, summarise
from .report import (
    TTFD_SLACK_MS,
    Results,
    delivery_table,
    frames_table,
    interval_table,
    mark,
    plot,
    table,
    ttfd_table,
)

Progress = Callable[[str], None]


def scenarios(config: Config) -> list[Scenario]:
    """The grid: every scenario run, each repetition its own."""
    base = {"tokens": config.tokens, "first_token_delay": config.first_token_delay}
    out: set[Scenario] = set()
    for transport in config.transports:
        for lat in config.latencies_ms:
            for rate in config.rates:
                for rep in range(config.reps):
                    out.add(
                        Scenario(
                            "batched",
                            transport,
                            lat,
                            rate,
                            min_interval_ms=config.min_interval_ms,
                            rep=rep,
                            **base,
                        )
                    )
                for rep in range(config.naive_reps if transport in config.naive_transports else 0):
                    out.add(
                        Scenario(
                            "naive",
                            transport,
                            lat,
                            rate,
                            min_interval_ms=config.min_interval_ms,
                            rep=rep,
                            **base,
                        )
                    )
    return sorted(out, key=lambda s: (s.key, s.rep))


def interval_scenarios(config: Config) -> list[Scenario]:
    """The minimum-interval sweep, run apart from the grid so other streams don't skew its lags."""
    return [
        Scenario(
            "batched",
            "http",
            lat,
            config.interval_rate,
            tokens=config.tokens,
            first_token_delay=config.first_token_delay,
            min_interval_ms=interval,
            group="interval",
            rep=rep,
        )
        for lat in config.interval_latencies_ms
        for interval in config.intervals_ms
        for rep in range(config.interval_reps)
    ]


def ttfd_scenarios(config: Config) -> list[Scenario]:
    """Short answers for the time to first delta, run one at a time so no other stream competes."""
    return [
        Scenario(
            mode,
            "http",
            lat,
            rate,
            tokens=config.ttfd_tokens,
            first_token_delay=config.first_token_delay,
            min_interval_ms=config.min_interval_ms,
            group="ttfd",
            rep=rep,
        )
        for mode in ("batched", "naive")
        for rate in config.rates
        for lat in config.latencies_ms
        for rep in range(config.ttfd_reps)
    ]


def run(
    config: Config,
    sections: set[str],
    *,
    doc: str | Path | None,
    plot_path: str | Path | None,
    progress: Progress = lambda _line: None,
) -> str:
    """Run the sections; the document is rewritten after each, so a late failure keeps the rest."""
    started = time.monotonic()
    when = dt.datetime.now(dt.UTC)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    parts: dict[str, Any] = {}

    def write() -> str:
        markdown = render(
            config,
            parts,
            when=when,
            load=load,
            elapsed=time.monotonic() - started,
            plot_name=Path(plot_path).name if plot_path else None,
        )
        if doc:
            Path(doc).write_text(markdown)
        return markdown

    if "imports" in sections:
        from .imports import measure

        # On the built artifact: measure() runs sam build first.
        parts["imports"] = measure(config.import_runs, progress=progress)
        write()

    if "delivery" in sections:
        todo = scenarios(config)
        progress(f"delivery: {len(todo)} scenario runs on {config.workers} processes")
        runs = run_all(todo, workers=config.workers, progress=progress)
        sweep = interval_scenarios(config)
        progress(f"minimum interval: {len(sweep)} runs, {config.interval_workers} at a time")
        runs += run_all(sweep, workers=config.interval_workers, progress=progress)
        quiet = ttfd_scenarios(config)
        progress(f"time to first delta: {len(quiet)} short runs, one at a time")
        runs += run_all(quiet, workers=1, progress=progress)
        parts["results"] = Results(config, summarise(runs))
        if plot_path:
            plot(parts["results"], Path(plot_path))
        write()

    if "e2e" in sections:
        from .e2e import run_e2e

        parts["e2e"] = run_e2e(config, progress=progress)
        write()

    if "calls" in sections:
        from .calls import run_calls

        progress("calls: AWS API calls per answer through the local stack")
        parts["calls"] = run_calls(progress=progress)
        write()

    if "cache" in sections:
        from .cache import run_cache

        parts["cache"] = run_cache(config.quick, progress=progress)
    return write()


# ---------------------------------------------------------------------------- the document


def render(
    config: Config,
    parts: dict[str, Any],
    *,
    when: dt.datetime,
    load: float,
    elapsed: float,
    plot_name: str | None,
) -> str:
    res: Results | None = parts.get("results")
    out = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m benchmarks`); do not edit by hand. "
        "`python -m benchmarks --quick` runs a short version.",
        "",
        "The question: does the stream function deliver an answer at the LLM's speed, whatever "
        "the PostToConnection latency, with as few WebSocket messages as possible, and does it "
        "start fast? The baseline is the naive loop `for chunk in llm: post_to_connection(chunk)`.",
        "",
        "## This run",
        "",
        table(
            ["", ""],
            [
                ["date (UTC)", when.strftime("%Y-%m-%d %H:%M")],
                ["python", f"{platform.python_implementation()} {platform.python_version()}"],
                [
                    "machine",
                    f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
                    f"load average {load:.1f} at the start",
                ],
                ["kind of run", "**quick** (not for the docs)" if config.quick else "full"],
                ["took", f"{elapsed / 60:.1f} min"],
            ],
        ),
        "",
    ]
    if res is not None:
        out += summary_section(config, res, parts)
        out += delivery_sections(config, res, plot_name)
    if "imports" in parts:
        from .imports import render_imports

        out += render_imports(parts["imports"])
    if "e2e" in parts:
        from .e2e import render_e2e

        out += render_e2e(config, parts["e2e"])
    if "calls" in parts:
        from .calls import render_calls

        out += render_calls(parts["calls"])
    if "cache" in parts:
        from .cache import render_cache

        out += render_cache(parts["cache"])
    if res is not None:
        out += method_section(config)
    return "\n".join(out).rstrip() + "\n"


def summary_section(config: Config, res: Results, parts: dict[str, Any]) -> list[str]:
    _, chosen = interval_table(res)
    rows = [
        [
            "delivery ≤ 1.05 × (LLM time + one post round trip), every latency and rate",
            worst(res, "ratio_max", "{:.3f}"),
            mark(res.ratio_ok()),
        ],
        [
            "at most one delta frame per post round trip or per minimum interval"
            " (+ the final flush)",
            worst(res, "frames_over_bound", "{:+.0f} frames vs the bound"),
            mark(res.frames_ok()),
        ],
        [
            f"time to first delta added ≤ one post round trip + {TTFD_SLACK_MS:g} ms "
            "(median of the quiet runs)",
            ttfd_worst(res),
            mark(res.ttfd_ok()),
        ],
        [
            "every answer arrived whole, in order, with gapless `seq`, frames ≤ 32 KB",
            "all runs" if res.correct() else "**some runs failed**",
            mark(res.correct()),
        ],
    ]
    return [
        "## Targets",
        "",
        "Checked on the worst repetition of every batched scenario, through boto3 and HTTP "
        "(the tables below show medians).",
        "",
        table(["target", "worst case", "met"], rows),
        "",
        interval_verdict(config, chosen),
        "",
    ]


def interval_verdict(config: Config, chosen: float | None) -> str:
    see = "(see [Choosing the minimum interval](#choosing-the-minimum-interval))"
    shipped = f"The shipped default minimum interval is {config.min_interval_ms:g} ms"
    if chosen is None:
        return f"{shipped}; this run's sweep picked none {see}."
    if chosen == config.min_interval_ms:
        return f"{shipped}, and this run's data pick the same: **{chosen:g} ms** {see}."
    return (
        f"⚠️ {shipped}, but this run's data pick **{chosen:g} ms** {see}. Re-run on a quiet "
        "machine before changing it: the sweep is sensitive to CPU contention."
    )


def ttfd_worst(res: Results) -> str:
    quiet = res.ttfd_quiet()
    if not quiet:
        return "–"
    over = max(s.ttfd_added_ms - s.post_rtt * 1000 for s in quiet)
    return f"round trip {over:+.1f} ms"


def worst(res: Results, metric: str, fmt: str) -> str:
    values = [getattr(s, metric) for s in res.batched("http")]
    return fmt.format(max(values)) if values else "–"


def delivery_sections(config: Config, res: Results, plot_name: str | None) -> list[str]:
    interval_md, chosen = interval_table(res)
    reps = f"Median of {config.reps} runs (the naive loop: {config.naive_reps})"
    out = [
        "## Delivery time against the physical limit",
        "",
        f"A {config.tokens}-token answer from the mock LLM (first token after "
        f"{config.first_token_delay * 1000:.0f} ms, then a steady rate), streamed by the real "
        "`stream_answer` with `OpenAIProvider` and `FrameSender` "
        f"(minimum interval {config.min_interval_ms:g} ms), posting through boto3's "
        "`apigatewaymanagementapi` client to a local Management API endpoint that answers each "
        f"PostToConnection after the injected latency. {reps}.",
        "",
        "*Limit* = the LLM's time (request start to its last token) + one post round trip (the "
        "median measured in the run). *Delivery* = request start to the return of the post that "
        "carried the last delta. *Token lag* = for each token, from the LLM emitting it to the "
        "return of the post that carried it. *Naive* is the baseline loop, one post per delta in "
        "the read loop, run in the same benchmark.",
        "",
        delivery_table(res, "http"),
        "",
        f"Peak memory (VmHWM) of a benchmark worker process, which streams and also hosts the "
        f"mock LLM: {max(s.peak_rss_kb for s in res.summaries.values()) / 1024:.0f} MB.",
        "",
    ]
    if plot_name:
        out += [f"![Delivery time versus post latency]({plot_name})", ""]
    out += [
        "## Frames and message cost",
        "",
        f"API Gateway bills WebSocket messages at ${MESSAGE_PRICE_PER_MILLION:.2f} per million, "
        "metered per 32 KB, so the cost of a million answers in dollars is the number of "
        "messages per answer (start + deltas + end; every frame here is far below 32 KB). "
        "The `accepted` reply is the same for both and not counted.",
        "",
        frames_table(res, "http"),
        "",
        "## Time to first delta",
        "",
        "How much later the first delta reaches the client than the LLM produced it: from the "
        "mock emitting the first token to the return of the post that carried it. Measured on "
        f"short answers ({config.ttfd_tokens} tokens), one stream at a time so that no other "
        f"benchmark stream competes for the 2 CPUs; median of {config.ttfd_reps} runs. "
        "*Before the post* is the service's own work: reading and parsing the chunk and handing "
        "it to the sender. *In the busy grid* is the same figure from the 1000-token runs "
        f"above, {config.workers} streams at a time, where the CPU is shared.",
        "",
        ttfd_table(res),
        "",
        "## Choosing the minimum interval",
        "",
        f"The same answer at {config.interval_rate:g} tokens/s (the fast model, where the "
        "interval matters most) for several minimum intervals. Fewer frames cost less; a longer "
        "interval makes each token wait longer.",
        "",
        interval_md,
        "",
        f"These runs are apart from the grid, {config.interval_workers} at a time, median of "
        f"{config.interval_reps}. The rule: the longest interval that adds at most "
        f"{LAG_BUDGET_MS:g} ms to the p99 token lag, with no post latency, over no interval at "
        "all (under the ~100 ms at which a delay stops reading as instant, with room for the "
        f"network). This run picks **{'–' if chosen is None else f'{chosen:g}'} ms**. Against no "
        "interval it cuts the messages of a fast model by an order of magnitude; a longer one "
        "saves a few more dollars per million answers but makes the text visibly step. With a "
        "real post round trip of 20–50 ms the interval rarely binds: batching during the post "
        "already spaces the frames.",
        "",
        "## Without HTTP: the sender alone",
        "",
        "The same grid with a post function that only sleeps the latency (no boto3, no HTTP), "
        "which isolates the sender from botocore's own cost.",
        "",
        delivery_table(res, "fake") if "fake" in config.transports else "(not run)",
        "",
    ]
    return out


def method_section(config: Config) -> list[str]:
    return [
        "## How it is measured",
        "",
        "- Each scenario runs in its own worker process (with its own mock LLM, so the "
        "measured process holds no other stream), "
        f"{config.workers} processes at a time on this machine; each stream mostly sleeps. "
        "Every worker first streams one short answer, so numbers are for a warm container.",
        "- Times are `time.monotonic()`. Token emission times come from the mock LLM "
        "(`RecordedRequest.token_times`), post times from around the post call.",
        "- Every run checks that the text arrived whole and in order with gapless `seq`.",
        "- The HTTP Management API endpoint (`benchmarks/management_api.py`) takes the latency "
        "from its stage name, so boto3's SigV4 signing, retries config and keep-alive "
        "connection pool are all in the measured path.",
        "- This is a shared 2-CPU machine running other work, so single runs are noisy; the "
        "tables are medians and the targets are checked against the worst run (the time to "
        "first delta against the median of its quiet runs, as its section says).",
        "",
    ]
