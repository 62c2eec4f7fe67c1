"""``python -m benchmarks``: run the benchmarks, print the tables, rewrite docs/benchmarks.md.

``--quick`` runs a short version (fewer tokens, rates and repetitions) that checks the harness
and gives rough numbers; it prints but leaves the docs alone unless --doc/--plot say otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import ROOT, add_paths
from .config import FULL, QUICK

SECTIONS = ("delivery", "imports", "e2e", "calls", "cache")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections (default: all of {','.join(SECTIONS)})",
    )
    parser.add_argument("--workers", type=int, help="scenario processes at once")
    parser.add_argument(
        "--doc",
        help="markdown file to rewrite ('-' for none; "
        "default docs/benchmarks.md, or none with --quick)",
    )
    parser.add_argument(
        "--plot",
        help="PNG to rewrite ('-' for none; "
        "default docs/benchmark-delivery.png, or none with --quick)",
    )
    args = parser.parse_args(argv)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    config = QUICK if args.quick else FULL
    default_doc = "-" if args.quick else str(ROOT / "docs" / "benchmarks.md")
    default_plot = "-" if args.quick else str(ROOT / "docs" / "benchmark-delivery.png")
    doc, plot_path = args.doc or default_doc, args.plot or default_plot
    if args.workers:
        config = config.scaled(workers=args.workers)

    add_paths()
    from .document import run

    started = time.monotonic()
    markdown = run(
        config,
        sections,
        doc=None if doc == "-" else doc,
        plot_path=None if plot_path == "-" else plot_path,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(markdown)
    print(f"benchmarks took {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
