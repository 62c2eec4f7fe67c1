"""A flag that one thread raises and another acts on, even while it is blocked elsewhere.

The stream reads the model on one thread; a cancel (seen by the watcher) and a client found gone
(seen by the sender) are raised on others. Each is a ``Signal``: the reading thread asks it
between chunks, and while the model's stream is open the signal also holds an action (abort
that stream), so that a read blocked on a model that sends nothing ends at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from ..core.observability import logger


class Signal:
    """Set once, from any thread. Callable, like a plain ``() -> bool`` predicate."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._action: Callable[[], None] | None = None
        self.acted = False
        """The action held when the signal was raised has run (for a cancel: the model's stream
        was aborted, so whatever its read raised was the cancel)."""

    def __call__(self) -> bool:
        return self._event.is_set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            action, self._action = self._action, None
        self._run(action)

    @contextlib.contextmanager
    def on_set(self, action: Callable[[], None]) -> Iterator[None]:
        """While the block runs, raising the signal runs ``action`` once (at once, if it was
        raised already)."""
        with self._lock:
            already = self._event.is_set()
            if not already:
                self._action = action
        if already:
            self._run(action)
        try:
            yield
        finally:
            with self._lock:
                self._action = None

    def _run(self, action: Callable[[], None] | None) -> None:
        if action is None:
            return
        self.acted = True
        try:
            action()
        except Exception:  # e.g. the stream was closing on its own; the signal stands
            logger.info("a signal's action failed")
