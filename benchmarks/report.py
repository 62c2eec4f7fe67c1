"""Markdown tables and the delivery plot, from the summaries the runs produced."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .config import LAG_BUDGET_MS, MESSAGE_PRICE_PER_MILLION, Config
from .delivery import Summary

RATIO_TARGET = 1.05
TTFD_SLACK_MS = 5.0


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mark(ok: bool) -> str:
    return "✅" if ok else "❌"


def money(dollars: float) -> str:
    return f"${dollars:,.0f}"


class Results:
    """Scenario summaries keyed the way the tables look them up."""

    def __init__(self, config: Config, summaries: dict[tuple[Any, ...], Summary]) -> None:
        self.config = config
        self.summaries = summaries

    def get(
        self,
        mode: str,
        transport: str,
        latency: float,
        rate: float,
        interval: float | None = None,
        group: str = "grid",
    ) -> Summary | None:
        interval = self.config.min_interval_ms if interval is None else interval
        tokens = self.config.ttfd_tokens if group == "ttfd" else self.config.tokens
        return self.summaries.get((group, mode, transport, latency, rate, tokens, interval))

    def ttfd(self, mode: str, latency: float, rate: float) -> Summary | None:
        return self.get(mode, "http", latency, rate, group="ttfd")

    def grid(self) -> list[tuple[float, float]]:
        return [(r, lat) for r in self.config.rates for lat in self.config.latencies_ms]

    def pairs(self, transport: str) -> Iterator[tuple[float, float, Summary, Summary | None]]:
        """Each grid scenario that ran batched, with its naive baseline if that ran too."""
        for rate, lat in self.grid():
            batched = self.get("batched", transport, lat, rate)
            if batched is not None:
                yield rate, lat, batched, self.get("naive", transport, lat, rate)

    # ------------------------------------------------------------------ targets

    def batched(self, transport: str = "http") -> list[Summary]:
        return [s for r, lat in self.grid() if (s := self.get("batched", transport, lat, r))]

    def ratio_ok(self, transport: str = "http") -> bool:
        return all(s.ratio_max <= RATIO_TARGET for s in self.batched(transport))

    def frames_ok(self, transport: str = "http") -> bool:
        return all(s.frames_over_bound <= 0 for s in self.batched(transport))

    def ttfd_quiet(self) -> list[Summary]:
        return [s for r, lat in self.grid() if (s := self.ttfd("batched", lat, r))]

    def ttfd_ok(self) -> bool:
        """The median of the quiet runs; single runs on a shared machine catch scheduler noise."""
        quiet = self.ttfd_quiet()
        return bool(quiet) and all(
            s.ttfd_added_ms <= s.post_rtt * 1000 + TTFD_SLACK_MS for s in quiet
        )

    def correct(self) -> bool:
        return all(s.all_ok for s in self.summaries.values())


# ---------------------------------------------------------------------------- sections


def delivery_table(res: Results, transport: str) -> str:
    rows = []
    for rate, lat, b, n in res.pairs(transport):
        rows.append(
            [
                f"{rate:g}",
                f"{lat:g}",
                f"{b.llm_time:.2f}",
                f"{b.post_rtt * 1000:.1f}",
                f"{b.limit:.2f}",
                f"{b.delivery:.2f}",
                f"**{b.ratio:.3f}**",
                f"{b.ratio_max:.3f}",
                f"{b.lag_p50_ms:.0f} / {b.lag_p99_ms:.0f}",
                f"{n.delivery:.2f}" if n else "–",
                f"{n.ratio:.2f}" if n else "–",
                mark(b.ratio_max <= RATIO_TARGET),
            ]
        )
    return table(
        [
            "LLM tok/s",
            "post latency ms",
            "LLM time s",
            "post round trip ms",
            "limit s",
            "batched delivery s",
            "batched ratio",
            "worst ratio",
            "token lag p50/p99 ms",
            "naive delivery s",
            "naive ratio",
            "≤ 1.05",
        ],
        rows,
    )


def frames_table(res: Results, transport: str) -> str:
    rows = []
    for rate, lat, b, n in res.pairs(transport):
        rows.append(
            [
                f"{rate:g}",
                f"{lat:g}",
                f"{b.delta_frames:.0f}",
                f"{b.frame_bound:.0f}",
                f"{b.messages:.0f}",
                money(b.messages * MESSAGE_PRICE_PER_MILLION),
                f"{n.messages:.0f}" if n else "–",
                money(n.messages * MESSAGE_PRICE_PER_MILLION) if n else "–",
                f"{b.max_frame_bytes:.0f}",
                mark(b.frames_over_bound <= 0),
            ]
        )
    return table(
        [
            "LLM tok/s",
            "post latency ms",
            "batched delta frames",
            "allowed (1 per max(rtt, interval) + flush)",
            "batched messages/answer",
            "batched $ per M answers",
            "naive messages/answer",
            "naive $ per M answers",
            "largest frame B",
            "within bound",
        ],
        rows,
    )


def ttfd_table(res: Results) -> str:
    rows = []
    for rate, lat in res.grid():
        q = res.ttfd("batched", lat, rate)
        n = res.ttfd("naive", lat, rate)
        g = res.get("batched", "http", lat, rate)
        if q is None:
            continue
        budget = q.post_rtt * 1000 + TTFD_SLACK_MS
        rows.append(
            [
                f"{rate:g}",
                f"{lat:g}",
                f"{q.llm_ttft * 1000:.0f}",
                f"{q.post_rtt * 1000:.1f}",
                f"**{q.ttfd_added_ms:.1f}**",
                f"{q.ttfd_queued_ms:.1f}",
                f"{q.ttfd_over_rtt_max_ms + q.post_rtt * 1000:.1f}",
                f"{budget:.1f}",
                f"{n.ttfd_added_ms:.1f}" if n else "–",
                f"{g.ttfd_added_ms:.1f}" if g else "–",
                mark(q.ttfd_added_ms <= budget),
            ]
        )
    return table(
        [
            "LLM tok/s",
            "post latency ms",
            "LLM's own TTFT ms",
            "post round trip ms",
            "added by the service ms",
            "of which before the post ms",
            "worst run ms",
            "target ms (rtt + 5)",
            "naive added ms",
            "in the busy grid ms",
            "met",
        ],
        rows,
    )


def interval_table(res: Results) -> tuple[str, float | None]:
    """The minimum-interval trade-off, and the interval the data pick (see LAG_BUDGET_MS)."""
    cfg = res.config
    rows = []
    for lat in cfg.interval_latencies_ms:
        for interval in cfg.intervals_ms:
            s = res.get("batched", "http", lat, cfg.interval_rate, interval, group="interval")
            if s is None:
                continue
            rows.append(
                [
                    f"{interval:g}",
                    f"{lat:g}",
                    f"{s.delta_frames:.0f}",
                    f"{s.messages:.0f}",
                    money(s.messages * MESSAGE_PRICE_PER_MILLION),
                    f"{s.ratio:.3f}",
                    f"{s.lag_p50_ms:.0f}",
                    f"{s.lag_p99_ms:.0f}",
                ]
            )
    return (
        table(
            [
                "min interval ms",
                "post latency ms",
                "delta frames",
                "messages/answer",
                "$ per M answers",
                "ratio",
                "token lag p50 ms",
                "token lag p99 ms",
            ],
            rows,
        ),
        pick_interval(res),
    )


def pick_interval(res: Results) -> float | None:
    """The longest interval adding at most LAG_BUDGET_MS of p99 lag over none, with no latency."""
    cfg = res.config
    if not cfg.interval_latencies_ms:
        return None
    lat = min(cfg.interval_latencies_ms)
    sweep = {
        i: res.get("batched", "http", lat, cfg.interval_rate, i, group="interval")
        for i in cfg.intervals_ms
    }
    base = sweep.get(min(cfg.intervals_ms))
    if base is None:
        return None
    fits = [
        i
        for i, s in sweep.items()
        if s is not None
        and s.lag_p99_ms - base.lag_p99_ms <= LAG_BUDGET_MS
        and s.ratio_max <= RATIO_TARGET
    ]
    return max(fits) if fits else None


def imports_table(rows: list[Any]) -> str:
    base = next((r.median_ms for r in rows if r.case.function is None), None)
    out = []
    for r in rows:
        rel = f"{r.median_ms / base:.1f}×" if base else "–"
        out.append(
            [
                r.case.label,
                f"**{r.median_ms:.0f}**",
                f"{r.min_ms:.0f}",
                rel,
                str(r.modules),
                "yes" if r.openai_loaded else "no",
            ]
        )
    return table(
        [
            "what is imported",
            "median ms",
            "fastest ms",
            "vs `import boto3`",
            "modules",
            "openai loaded",
        ],
        out,
    )


# ---------------------------------------------------------------------------- plot


def plot(res: Results, path: Path, transport: str = "http") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    lats = list(res.config.latencies_ms)
    for colour, rate in zip(colours, res.config.rates, strict=False):
        batched = [res.get("batched", transport, lat, rate) for lat in lats]
        naive = [res.get("naive", transport, lat, rate) for lat in lats]
        if all(batched):
            ax.plot(
                lats,
                [s.delivery for s in batched],
                "o-",
                color=colour,
                label=f"batched, {rate:g} tok/s",
            )
            ax.plot(lats, [s.limit for s in batched], ":", color=colour, alpha=0.6)
        if all(naive):
            ax.plot(
                lats,
                [s.delivery for s in naive],
                "s--",
                color=colour,
                label=f"naive (one post per delta), {rate:g} tok/s",
            )
    ax.set_yscale("log")
    ax.set_xlabel("PostToConnection latency (ms)")
    ax.set_ylabel(f"delivery time of a {res.config.tokens}-token answer (s, log scale)")
    ax.set_title("Delivery time vs post latency (dotted: physical limit)")
    ax.set_xticks(lats)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
