"""Debian's Chromium (``apt-get install chromium``), driven by Playwright, which here never
downloads a browser of its own: the one launch every browser test uses."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium(timeout_ms: int, *, skippable: bool = True) -> Iterator[Any]:
    """The browser, with Playwright's expectations waiting ``timeout_ms``. A missing Chromium
    fails the test; where ``skippable``, CI_ALLOW_NO_BROWSER=1 skips it instead."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: run `apt-get install chromium` (CI installs it)"
        if skippable and os.environ.get("CI_ALLOW_NO_BROWSER") == "1":
            pytest.skip(reason)
        pytest.fail(reason)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=timeout_ms)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
