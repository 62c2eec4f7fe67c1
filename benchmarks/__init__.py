"""Streaming benchmarks: delivery against the physical limit, frame cost, cold starts, end to end,
and the AWS calls each answer makes.

``python -m benchmarks`` runs them all, prints the tables and rewrites docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER = ROOT / "layers" / "stream"


def add_paths() -> None:
    """Make the layer's package and the repo's devstack importable, as pytest's pythonpath does."""
    for path in (str(ROOT), str(LAYER)):
        if path not in sys.path:
            sys.path.insert(0, path)
