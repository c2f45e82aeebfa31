"""Headless Chromium (Selenium, the Debian chromium and chromedriver) against a real
server on 127.0.0.1 that serves the page under test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import LiveServer, live_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# The network here is closed: without these Chromium keeps trying to reach Google.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1000,800",
]
# Records what the page asks the server for, before the page's own scripts run.
RECORD_FETCH = """
window.__requests = [];
const realFetch = window.fetch;
window.fetch = (input, init) => {
  window.__requests.push({ url: String(input), body: init?.body ?? null });
  return realFetch(input, init);
};
"""


@pytest.fixture(scope="session")
def web_server(tiny_model_factory) -> Iterator[LiveServer]:
    """A server with an API key over a tiny Llama with room for long replies (so Stop
    lands mid-stream)."""
    with live_server(tiny_model_factory("llama", max_position_embeddings=4096)) as live:
        yield live


@pytest.fixture(scope="session")
def browser() -> Iterator:
    # NOTE: a failure, not a skip: `make test` installs both, so their absence is a bug.
    from selenium import webdriver

    if shutil.which(CHROMIUM) is None or shutil.which(CHROMEDRIVER) is None:
        pytest.fail("no chromium/chromedriver: `make browser` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.TemporaryDirectory(prefix="edgechat-chromium-")
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile.name}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORD_FETCH})
    try:
        yield driver
    finally:
        driver.quit()
        profile.cleanup()
