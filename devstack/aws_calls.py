"""Counts the AWS API calls the functions make, per (service, operation), by wrapping botocore's
``BaseClient._make_api_call``. For thread isolation, where the handlers run in this process.

A call counts when the functions' own files (their code_dir and layers) are on the calling
thread's stack: so threads a handler starts to run its code (the sender, the lease renewer)
count, while the local stack's own calls (creating tables, polling the dead-letter queue) and a
test's do not. A call counts once however often botocore retries it, and whether or not it fails.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from botocore.client import BaseClient

if TYPE_CHECKING:
    from .runtime import Runtime

_lock = threading.Lock()
_counters: list[AwsCallCounter] = []  # installed ones; the wrapper is in place while any are
_original: Any = None  # what the wrapper calls
_wrapped = False  # whether the wrapper is in botocore's chain (it may be under another's)


def _counting_make_api_call(self: BaseClient, operation_name: str, api_params: Any) -> Any:
    service = self.meta.service_model.service_name
    caller = sys._getframe(1)
    for counter in tuple(_counters):
        counter._saw(service, operation_name, caller)
    return _original(self, operation_name, api_params)


class AwsCallCounter:
    """``with AwsCallCounter.for_runtime(runtime) as calls:`` counts the calls its functions make;
    ``calls.counts()`` reads them, ``calls.reset()`` reads and zeroes them."""

    def __init__(self, roots: Iterable[Path | str] | None = None) -> None:
        """Count calls made from files under ``roots``; None counts every call in this process."""
        self.roots = (
            None if roots is None else tuple(os.path.join(os.path.abspath(r), "") for r in roots)
        )
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        self._ours: dict[str, bool] = {}  # file name -> is it under a root

    @classmethod
    def for_runtime(cls, runtime: Runtime) -> AwsCallCounter:
        """A counter for every function of ``runtime``, which must run them in this process."""
        roots: list[Path] = []
        for spec in runtime.specs.values():
            if spec.isolation != "thread":
                raise ValueError(
                    f"{spec.name!r} runs in containers, whose calls this process cannot see; "
                    'count with isolation="thread"'
                )
            roots.extend([spec.code_dir] if spec.code_dir is not None else [])
            roots.extend(spec.layers)
        return cls(roots)

    # -- installing

    def install(self) -> AwsCallCounter:
        global _original, _wrapped
        with _lock:
            if self in _counters:
                return self
            if not _wrapped:
                _original = BaseClient._make_api_call
                BaseClient._make_api_call = _counting_make_api_call  # type: ignore[method-assign]
                _wrapped = True
            _counters.append(self)
        return self

    def uninstall(self) -> None:
        global _wrapped
        with _lock:
            if self not in _counters:
                return
            _counters.remove(self)
            # Left in place (counting for no one) if something else has wrapped it since.
            if not _counters and BaseClient._make_api_call is _counting_make_api_call:
                BaseClient._make_api_call = _original  # type: ignore[method-assign]
                _wrapped = False

    def __enter__(self) -> AwsCallCounter:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    # -- reading

    def counts(self) -> dict[tuple[str, str], int]:
        """Calls so far per (service, operation), e.g. ``("dynamodb", "PutItem")``."""
        with self._lock:
            return dict(sorted(self._counts.items()))

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset(self) -> dict[tuple[str, str], int]:
        """Zero the counts; returns what they were (one atomic read-and-reset)."""
        with self._lock:
            counts = dict(sorted(self._counts.items()))
            self._counts.clear()
        return counts

    def _saw(self, service: str, operation: str, caller: FrameType | None) -> None:
        if self.roots is not None and not self._from_roots(caller):
            return
        with self._lock:
            self._counts[(service, operation)] += 1

    def _from_roots(self, frame: FrameType | None) -> bool:
        assert self.roots is not None
        while frame is not None:
            name = frame.f_code.co_filename
            ours = self._ours.get(name)
            if ours is None:
                ours = self._ours[name] = os.path.abspath(name).startswith(self.roots)
            if ours:
                return True
            frame = frame.f_back
        return False
