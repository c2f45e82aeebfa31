"""The chat page in a real headless Chromium, against a real server."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.server.conftest import API_KEY, LiveServer
from tests.step_gate import held_steps
from tests.web.conftest import ARTIFACTS

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FINISHED = ("done", "stopped", "error")
# Steps the engine may take before a test acts on a running reply (greedy, so the
# same text every run): a few words, far from the reply's max_tokens.
NUM_FIRST_STEPS = 20
# Text lengths of the newest reply, recorded at each change of the conversation.
OBSERVE_REPLY = """
window.__lengths = [];
new MutationObserver(() => {
  const replies = document.querySelectorAll("#messages .msg.assistant .text");
  if (replies.length) window.__lengths.push(replies[replies.length - 1].textContent.length);
}).observe(document.getElementById("messages"),
           { childList: true, subtree: true, characterData: true });
"""


def open_page(browser, server: LiveServer, api_key: str | None = API_KEY) -> None:
    """The page, fresh, with ``api_key`` stored as a user's earlier visit left it."""
    browser.get(server.url)
    browser.execute_script("localStorage.clear()")
    if api_key is not None:
        browser.execute_script("localStorage.setItem('edgechat.apiKey', arguments[0])", api_key)
    browser.refresh()
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "model").text != "connecting…")


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


def last_message(browser):
    return browser.find_elements(By.CSS_SELECTOR, "#messages .msg")[-1]


def reply_text_length(browser) -> int:
    """As OBSERVE_REPLY counts it (the raw text, not Selenium's rendered ``.text``)."""
    text = last_message(browser).find_element(By.CLASS_NAME, "text")
    return browser.execute_script("return arguments[0].textContent.length", text)


def wait_finished(browser, timeout: float = 30):
    WebDriverWait(browser, timeout).until(
        lambda b: last_message(b).get_attribute("data-state") in FINISHED
    )
    return last_message(browser)


def chat_requests(browser) -> list[dict]:
    recorded = browser.execute_script("return window.__requests")
    return [json.loads(r["body"]) for r in recorded if r["url"].endswith("/chat/completions")]


def test_reply_streams_token_by_token(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    assert web_server.model in browser.find_element(By.ID, "model").text
    assert not browser.find_element(By.ID, "demo-badge").is_displayed()
    set_value(browser, "max-tokens", "300")
    set_value(browser, "temperature", "0")
    browser.execute_script(OBSERVE_REPLY)
    with held_steps(web_server.llm, NUM_FIRST_STEPS) as gate:
        send(browser, "Hello there")
        # The page shows the first tokens while the rest cannot have come yet.
        WebDriverWait(browser, 30).until(lambda b: reply_text_length(b) > 0)
        gate.wait_until_held()
        partial = reply_text_length(browser)
        gate.open()
        reply = wait_finished(browser)
    assert reply.get_attribute("data-state") == "done"
    lengths = browser.execute_script("return window.__lengths")
    assert partial in lengths and lengths[-1] > partial, f"no growth in steps: {lengths}"
    assert reply.find_element(By.CLASS_NAME, "text").text.strip()
    stats = reply.find_element(By.CLASS_NAME, "stats").text
    assert "first token" in stats and "tok/s" in stats
    # Shift+Enter is a new line, not a send.
    prompt = browser.find_element(By.ID, "prompt")
    prompt.send_keys("line one", Keys.SHIFT, Keys.ENTER, Keys.NULL, "line two")
    assert prompt.get_attribute("value") == "line one\nline two"
    assert len(chat_requests(browser)) == 1


def test_image_is_sent_downscaled_and_the_error_shown(
    browser, web_server: LiveServer, tmp_path: Path
) -> None:
    open_page(browser, web_server)
    paths = []
    for i, size in enumerate([(1344, 800), (200, 300)]):
        paths.append(tmp_path / f"image{i}.png")
        Image.new("RGB", size, (200, 60 * i, 40)).save(paths[-1])
    browser.find_element(By.ID, "file").send_keys("\n".join(str(p) for p in paths))
    WebDriverWait(browser, 10).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#thumbs img")) == 2
    )
    send(browser, "What is in these pictures?")
    error = wait_finished(browser)
    assert error.get_attribute("data-state") == "error"
    assert "400" in error.text and "does not accept images" in error.text
    assert not browser.find_elements(By.CSS_SELECTOR, "#thumbs img")

    content = chat_requests(browser)[-1]["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "What is in these pictures?"}
    sizes = []
    for part in content[1:]:
        assert part["type"] == "image_url"
        header, data = part["image_url"]["url"].split(",", 1)
        assert header == "data:image/jpeg;base64"
        sizes.append(Image.open(io.BytesIO(base64.b64decode(data))).size)
    assert sizes == [(672, 400), (200, 300)]  # longest side at most 672


def test_stop_aborts_and_frees_the_kv_cache(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    set_value(browser, "max-tokens", "3500")
    set_value(browser, "temperature", "0")
    with held_steps(web_server.llm, NUM_FIRST_STEPS) as gate:
        send(browser, "Tell me a long story")
        WebDriverWait(browser, 30).until(lambda b: reply_text_length(b) > 0)
        # Held at the gate, the reply cannot finish before the click lands.
        gate.wait_until_held()
        browser.find_element(By.ID, "stop").click()
        reply = wait_finished(browser)
        assert reply.get_attribute("data-state") == "stopped"
        assert "stopped" in reply.find_element(By.CLASS_NAME, "stats").text
        # The abort goes through while the engine is held.
        assert web_server.all_blocks_free()
    assert browser.find_element(By.ID, "send").is_enabled()


def test_wrong_api_key_shows_the_401(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server, api_key=None)
    assert "401" in browser.find_element(By.ID, "model").text
    browser.find_element(By.TAG_NAME, "summary").click()
    key = browser.find_element(By.ID, "api-key")
    key.send_keys("sk-wrong", Keys.TAB)  # leaving the field stores it
    send(browser, "hi")
    error = wait_finished(browser)
    assert error.get_attribute("data-state") == "error"
    assert "401" in error.text and "invalid or missing API key" in error.text


def test_reload_forgets_the_conversation_but_keeps_the_key(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server, api_key=None)
    browser.find_element(By.TAG_NAME, "summary").click()
    browser.find_element(By.ID, "api-key").send_keys(API_KEY, Keys.TAB)
    WebDriverWait(browser, 10).until(
        lambda b: web_server.model in b.find_element(By.ID, "model").text
    )
    send(browser, "remember me")
    wait_finished(browser)
    browser.refresh()
    WebDriverWait(browser, 10).until(
        lambda b: web_server.model in b.find_element(By.ID, "model").text
    )
    assert browser.find_elements(By.CSS_SELECTOR, "#messages .msg") == []
    assert browser.find_element(By.ID, "api-key").get_attribute("value") == API_KEY
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == ""
    # Nothing but the key is stored.
    assert browser.execute_script("return Object.keys(localStorage)") == ["edgechat.apiKey"]
    assert browser.execute_script("return sessionStorage.length") == 0


def test_model_output_is_text_and_code_blocks_are_code(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    hostile = "<img src=x onerror=\"window.__pwned = 1\"> see:\n```python\nprint('<b>')\n```\nend"
    html = browser.execute_async_script(
        """
        const [text, done] = arguments;
        import("/web/render.js").then(({ renderText }) => {
          const element = document.createElement("div");
          renderText(element, text);
          done(element.innerHTML);
        });
        """,
        hostile,
    )
    assert "<img" not in html
    assert "<pre><code>print('&lt;b&gt;')\n</code></pre>" in html
    assert browser.execute_script("return window.__pwned") is None


def test_every_asset_comes_from_the_server(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map((entry) => entry.name)"
    )
    assert any(url.endswith("/web/app.js") for url in loaded)
    assert any(url.endswith("/web/render.js") for url in loaded)
    assert all(url.startswith(web_server.url + "/") for url in loaded), loaded


def test_screenshots(browser, web_server: LiveServer, tmp_path: Path) -> None:
    """A finished conversation, saved for a person to look at (desktop and phone width)."""
    open_page(browser, web_server)
    set_value(browser, "system", "You are terse.")
    set_value(browser, "max-tokens", "60")
    send(browser, "Write a haiku about robots")
    wait_finished(browser)
    image = tmp_path / "photo.png"
    Image.new("RGB", (800, 600), (30, 120, 200)).save(image)
    browser.find_element(By.ID, "file").send_keys(str(image))
    WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#thumbs img"))
    send(browser, "And this photo?")
    wait_finished(browser)
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "web-chat.png"))
    browser.set_window_size(390, 844)
    try:
        assert browser.save_screenshot(str(ARTIFACTS / "web-chat-phone.png"))
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, "the page scrolls sideways on a phone"
    finally:
        browser.set_window_size(1000, 800)


def test_images_can_be_dropped_and_pasted(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    browser.execute_script(
        """
        const canvas = document.createElement("canvas");
        canvas.width = 900;
        canvas.height = 100;
        canvas.getContext("2d").fillRect(0, 0, 900, 100);
        const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
        const files = () => {
          const data = new DataTransfer();
          data.items.add(new File([blob], "wide.png", { type: "image/png" }));
          data.items.add(new File(["not an image"], "notes.txt", { type: "text/plain" }));
          return data;
        };
        document.getElementById("messages")
          .dispatchEvent(new DragEvent("drop", { dataTransfer: files(), bubbles: true }));
        document.getElementById("prompt")
          .dispatchEvent(new ClipboardEvent("paste", { clipboardData: files(), bubbles: true }));
        """
    )
    WebDriverWait(browser, 10).until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#thumbs img")) == 2
    )
    browser.find_element(By.CSS_SELECTOR, "#thumbs button[aria-label='Remove image 1']").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#thumbs img")) == 1
