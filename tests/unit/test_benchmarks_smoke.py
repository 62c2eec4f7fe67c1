"""The benchmark harness runs end to end in a tiny configuration: its structure, not timings."""

from __future__ import annotations

import pytest

from benchmarks.config import Config
from benchmarks.document import interval_scenarios, run, scenarios, ttfd_scenarios
from benchmarks.imports import MARK, parse_importtime

TINY = Config(
    tokens=20,
    first_token_delay=0.05,
    rates=(400,),
    latencies_ms=(0, 5),
    transports=("http", "fake"),
    naive_transports=("http",),
    reps=1,
    intervals_ms=(0, 50),
    interval_rate=400,
    interval_latencies_ms=(0,),
    interval_reps=1,
    ttfd_tokens=5,
    ttfd_reps=1,
    workers=2,
    quick=True,
)


def test_a_tiny_delivery_run_writes_every_table_and_the_plot(tmp_path):
    doc, png = tmp_path / "benchmarks.md", tmp_path / "delivery.png"
    markdown = run(TINY, {"delivery"}, doc=doc, plot_path=png)
    assert doc.read_text() == markdown
    assert png.read_bytes().startswith(b"\x89PNG")
    for heading in (
        "## Targets",
        "## Delivery time against the physical limit",
        "## Frames and message cost",
        "## Time to first delta",
        "## Choosing the minimum interval",
        "## Without HTTP: the sender alone",
    ):
        assert heading in markdown
    assert "every answer arrived whole" in markdown and "**some runs failed**" not in markdown
    assert "The shipped default minimum interval is 50 ms" in markdown


def test_the_interval_sweep_and_first_delta_runs_are_summarised_apart_from_the_grid():
    grid, sweep, ttfd = scenarios(TINY), interval_scenarios(TINY), ttfd_scenarios(TINY)
    assert {s.group for s in grid} == {"grid"}
    assert {s.group for s in sweep} == {"interval"} and {s.group for s in ttfd} == {"ttfd"}
    keys = [{s.key for s in part} for part in (grid, sweep, ttfd)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2])


def test_importtime_output_is_summed_over_top_level_imports_after_the_mark():
    stderr = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       100 |        100 | site",
            MARK,
            "import time:        50 |         50 |   botocore.x",
            "import time:       200 |       1250 | boto3",
            "import time:        10 |         10 |   openai._x",
            "import time:        20 |        750 | openai",
        ]
    )
    ms, modules, openai = parse_importtime(stderr)
    assert ms == 2.0 and modules == 4 and openai


def test_the_cache_workload_repeats_exactly_that_many_earlier_prompts():
    from benchmarks.cache import workload

    prompts = workload(100, 30)
    assert len(prompts) == 100 and sum(repeat for _, repeat in prompts) == 30
    for i, (prompt, repeat) in enumerate(prompts):
        earlier = [p for p, _ in prompts[:i]]
        assert (prompt in earlier) is repeat
    assert workload(100, 30) != prompts  # each run its own prompts: a fresh cache


def test_the_cache_table_reports_calls_hits_and_times_with_and_without_the_cache():
    from benchmarks.cache import CacheResult, CacheRun, render_cache

    off = CacheRun(False, 100, 100, 0, 0, 100, 1400, 2300, 1400, 19.0)
    on = CacheRun(True, 100, 100, 21, 9, 70, 1300, 1900, 280, 17.0)
    markdown = "\n".join(render_cache(CacheResult([off, on], 100, 30, 10)))
    assert "## Response cache" in markdown
    assert "| on | 100/100 | 70 | 21 / 9 | **1300** | 1900 | **280** | 17.0 |" in markdown
    assert "30 fewer model calls (70% of them)" in markdown and "0.20× the time" in markdown


def test_a_cold_start_ratio_is_the_median_of_each_rounds_own_ratio():
    from benchmarks.imports import CASES, Row

    baseline = Row(CASES[0], {"with": 200.0}, 1, frozenset())
    # Rounds where the machine was slow slow both: their ratios are what counts.
    handler = Row(CASES[1], {"with": 300.0}, 1, frozenset(), round_ratios={"with": [1.1, 1.2, 1.5]})
    assert handler.ratio("with", baseline) == 1.2
    assert Row(CASES[1], {"with": 300.0}, 1, frozenset()).ratio("with", baseline) == 1.5


def test_the_cold_start_verdict_shows_how_far_the_rounds_ratios_spread():
    import datetime as dt

    from benchmarks.imports import CASES, ColdStart, Row, quartiles, render_imports

    assert quartiles([1.0, 1.1, 1.2, 1.3, 1.4]) == pytest.approx((1.1, 1.3))
    assert quartiles([1.25]) == (1.25, 1.25)
    rows = [Row(c, {"with": 200.0, "without": 500.0}, 1, frozenset()) for c in CASES]
    rows[1] = Row(
        CASES[1],
        {"with": 250.0, "without": 600.0},
        1,
        frozenset(),
        round_ratios={"with": [1.1, 1.22, 1.27, 1.31, 1.4], "without": [1.2]},
    )
    result = ColdStart(rows, 15, "3.13.0", "a build", dt.datetime(2026, 12, 1, tzinfo=dt.UTC), 0.5)
    text = "\n".join(render_imports(result))
    assert "the message handler, in 1.27× (half of the rounds between 1.22× and 1.31×)" in text
