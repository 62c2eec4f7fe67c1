"""Streaming benchmarks: delivery against the physical limit, frame cost, cold starts, end to end,
and the AWS calls each answer makes.

``python -m benchmarks`` runs them all, prints the tables and rewrites docs/benchmarks.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LAYER = ROOT / "layers" / "stream"


def add_paths() -> None:
    """Make the layer's package and the repo's devstack importable, as pytest's pythonpath does."""
    for path in (str(ROOT), str(LAYER)):
        if path not in sys.path:
            sys.path.insert(0, path)


def local_stack(**changes: Any) -> Any:
    """A local stack on free ports with the mock LLM and no auth, as every benchmark runs it
    (``changes``: StackConfig fields), or ImportError when devstack is not importable."""
    from devstack.stack import LocalStack, StackConfig

    return LocalStack(
        StackConfig(
            ws_port=0,
            http_port=0,
            llm_base_url="",
            llm_model="gpt-4o-mini",
            auth_mode="none",
            **changes,
        )
    )
