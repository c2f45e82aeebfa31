"""What the page tests do to the page: open it, type, wait for a reply, read what it
asked the server, and stand in for the server where a reply must be known in advance."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.server.conftest import API_KEY, LiveServer

pytest.importorskip("selenium")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FINISHED = ("done", "stopped", "error")
# Chat replies the test writes: window.__stream.push(content) sends one chunk,
# window.__stream.finish(reason) the finish chunk and [DONE]. Other requests go through.
STUB_CHAT = """
const fetchBefore = window.fetch;
window.__stream = null;
window.fetch = (input, init) => {
  if (!String(input).endsWith("/v1/chat/completions")) return fetchBefore(input, init);
  window.__requests.push({ url: String(input), body: init?.body ?? null });
  const encoder = new TextEncoder();
  const body = new ReadableStream({ start(controller) {
    const event = (data) => encoder.encode(`data: ${JSON.stringify(data)}\\n\\n`);
    const send = (data) => controller.enqueue(event(data));
    window.__stream = {
      push: (content) => send({ choices: [{ index: 0, delta: { content }, finish_reason: null }] }),
      finish: (reason) => {
        send({ choices: [{ index: 0, delta: {}, finish_reason: reason }] });
        controller.enqueue(encoder.encode("data: [DONE]\\n\\n"));
        controller.close();
      },
    };
  } });
  return Promise.resolve(new Response(body, { headers: { "Content-Type": "text/event-stream" } }));
};
"""
# The model card says the model takes images (the tiny test model does not), so the
# page offers them and the server's refusal can be seen.
PRETEND_IMAGES = """
const fetchBeforeImages = window.fetch;
window.fetch = async (input, init) => {
  const response = await fetchBeforeImages(input, init);
  if (!String(input).endsWith("/v1/models") || !response.ok) return response;
  const list = await response.json();
  list.data.forEach((card) => (card.accepts_images = true));
  return new Response(JSON.stringify(list), { headers: { "Content-Type": "application/json" } });
};
"""


def open_page(browser, server: LiveServer, api_key: str | None = API_KEY) -> None:
    """The page, fresh (nothing kept from earlier tests), with ``api_key`` stored as a
    user's earlier visit left it."""
    browser.get(server.url)
    browser.execute_script("localStorage.clear()")
    if api_key is not None:
        browser.execute_script("localStorage.setItem('edgechat.apiKey', arguments[0])", api_key)
    browser.refresh()
    wait_for_model(browser)


def wait_for_model(browser) -> None:
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "model").text != "connecting…")


@contextmanager
def pretending_the_model_sees_images(browser) -> Iterator[None]:
    """Pages loaded inside the block believe the model accepts images."""
    script = browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": PRETEND_IMAGES}
    )
    try:
        yield
    finally:
        browser.execute_cdp_cmd(
            "Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]}
        )


def set_value(browser, element_id: str, value: str) -> None:
    field = browser.find_element(By.ID, element_id)
    browser.execute_script(
        "arguments[0].value = arguments[1];arguments[0].dispatchEvent(new Event('change'))",
        field,
        value,
    )


def send(browser, text: str) -> None:
    prompt = browser.find_element(By.ID, "prompt")
    prompt.send_keys(text)
    prompt.send_keys(Keys.ENTER)


def messages(browser) -> list:
    return browser.find_elements(By.CSS_SELECTOR, "#messages .msg")


def last_message(browser):
    return messages(browser)[-1]


def reply_text_length(browser) -> int:
    """The raw text's length (not Selenium's rendered ``.text``)."""
    text = last_message(browser).find_element(By.CLASS_NAME, "text")
    return browser.execute_script("return arguments[0].textContent.length", text)


def wait_finished(browser, timeout: float = 30):
    # Stale: the page redraws the conversation when a reply ends.
    WebDriverWait(browser, timeout, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda b: last_message(b).get_attribute("data-state") in FINISHED
    )
    return last_message(browser)


def action(message, name: str):
    """A message's button (Edit, Regenerate, Continue)."""
    return message.find_element(By.CSS_SELECTOR, f"button[data-action='{name}']")


def stats(message) -> str:
    return message.find_element(By.CLASS_NAME, "stats").text


def chat_requests(browser) -> list[dict]:
    recorded = browser.execute_script("return window.__requests")
    return [json.loads(r["body"]) for r in recorded if r["url"].endswith("/chat/completions")]


def stored_messages(browser) -> list[dict]:
    """The open conversation's messages as the page keeps them (raw text, not markdown)."""
    return browser.execute_script(
        "const id = localStorage.getItem('edgechat.current');"
        "const all = JSON.parse(localStorage.getItem('edgechat.conversations'));"
        "return all.find((c) => c.id === id).messages"
    )
