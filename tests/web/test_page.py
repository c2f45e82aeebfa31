"""The chat page in a real headless Chromium, against a real server."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.server.conftest import LiveServer
from tests.step_gate import held_steps
from tests.web.conftest import ARTIFACTS
from tests.web.page import (
    action,
    chat_requests,
    messages,
    open_page,
    pretending_the_model_sees_images,
    reply_text_length,
    send,
    set_value,
    stats,
    stored_messages,
    wait_finished,
)

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

# Steps the engine may take before a test acts on a running reply (greedy, so the
# same text every run): a few words, far from the reply's max_tokens.
NUM_FIRST_STEPS = 20
# Tokens of a reply cut off at max_tokens, and then of its continuation.
NUM_CUT_TOKENS, NUM_CONTINUED_TOKENS = 4, 8
# Text lengths of the newest reply, recorded at each change of the conversation.
OBSERVE_REPLY = """
window.__lengths = [];
new MutationObserver(() => {
  const replies = document.querySelectorAll("#messages .msg.assistant .text");
  if (replies.length) window.__lengths.push(replies[replies.length - 1].textContent.length);
}).observe(document.getElementById("messages"),
           { childList: true, subtree: true, characterData: true });
"""
# Keeps the raw text of each chat stream the page reads, in window.__streamed.
RECORD_STREAM = """
const fetchBeforeRecord = window.fetch;
window.__streamed = "";
window.fetch = async (input, init) => {
  const response = await fetchBeforeRecord(input, init);
  if (!String(input).endsWith("/v1/chat/completions")) return response;
  const [copy, forPage] = response.body.tee();
  copy.pipeThrough(new TextDecoderStream())
    .pipeTo(new WritableStream({ write: (text) => { window.__streamed += text; } }))
    .catch(() => {}); // cut by Stop
  return new Response(forPage, response);
};
"""


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
    assert "first token" in stats(reply) and "tok/s" in stats(reply)
    # Shift+Enter is a new line, not a send.
    prompt = browser.find_element(By.ID, "prompt")
    prompt.send_keys("line one", Keys.SHIFT, Keys.ENTER, Keys.NULL, "line two")
    assert prompt.get_attribute("value") == "line one\nline two"
    assert len(chat_requests(browser)) == 1


def test_image_is_sent_downscaled_and_the_error_shown(
    browser, web_server: LiveServer, tmp_path: Path
) -> None:
    with pretending_the_model_sees_images(browser):
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
    assert "not sent" in stats(messages(browser)[-2])
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


def test_images_are_off_for_a_text_only_model(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    assert not browser.find_element(By.ID, "file").is_enabled()
    assert "reads text only" in browser.find_element(By.ID, "attach").get_attribute("title")


def num_content_chunks(sse: str) -> int:
    """Chunks with text in a (maybe cut) chat stream: one a token."""
    chunks = [line[6:] for line in sse.split("\n\n")[:-1] if line.startswith("data: {")]
    return sum(bool(json.loads(c)["choices"][0]["delta"].get("content")) for c in chunks)


def test_stop_aborts_frees_the_kv_cache_and_counts_tokens(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    browser.execute_script(RECORD_STREAM)
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
        assert "stopped" in stats(reply)
        # The abort goes through while the engine is held.
        assert web_server.all_blocks_free()
    # Tokens as the server sent them, however the page's reads bunched them.
    num_tokens = num_content_chunks(browser.execute_script("return window.__streamed"))
    assert 0 < num_tokens <= NUM_FIRST_STEPS
    assert stats(reply).endswith(f"· {num_tokens} tokens"), stats(reply)
    assert browser.find_element(By.ID, "send").is_enabled()
    # A stopped reply can be taken up again.
    assert action(reply, "continue").is_displayed()


def test_a_401_opens_settings_at_the_api_key(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server, api_key=None)
    assert "401" in browser.find_element(By.ID, "model").text
    assert browser.find_element(By.ID, "settings").get_attribute("open") is not None
    key = browser.find_element(By.ID, "api-key")
    assert browser.switch_to.active_element == key
    assert "needs an API key" in browser.find_element(By.ID, "key-note").text
    key.send_keys("sk-wrong", Keys.TAB)  # leaving the field stores it
    send(browser, "hi")
    error = wait_finished(browser)
    assert error.get_attribute("data-state") == "error"
    assert "401" in error.text and "invalid or missing API key" in error.text
    assert "not sent" in stats(messages(browser)[-2])
    assert browser.switch_to.active_element == key
    assert "did not accept this API key" in browser.find_element(By.ID, "key-note").text
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "web-401.png"))


def test_max_tokens_fills_the_context_and_stays_within_it(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    field = browser.find_element(By.ID, "max-tokens")
    assert field.get_attribute("value") == ""
    assert field.get_attribute("placeholder") == "until the context is full"
    max_model_len = web_server.llm.max_model_len
    assert field.get_attribute("max") == str(max_model_len)
    set_value(browser, "max-tokens", str(max_model_len * 10))
    assert field.get_attribute("value") == str(max_model_len)


def test_a_reply_cut_off_at_max_tokens_offers_continue(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    set_value(browser, "max-tokens", str(NUM_CUT_TOKENS))
    set_value(browser, "temperature", "0")
    # NOTE: a question whose greedy answer's first tokens are whole characters, so the
    # cut text goes back as the same tokens (tests/server/test_continue.py says why).
    send(browser, "Hello")
    reply = wait_finished(browser)
    assert "cut off" in stats(reply)
    before = reply_text_length(browser)
    shown = stored_messages(browser)[-1]["text"]
    set_value(browser, "max-tokens", str(NUM_CONTINUED_TOKENS))
    action(reply, "continue").click()
    reply = wait_finished(browser)
    assert len(messages(browser)) == 2  # the same bubble, longer
    assert reply_text_length(browser) > before
    # The model is asked to go on from the reply as it stands, leaving it open.
    first, then = chat_requests(browser)[-2:]
    assert then["messages"][:-1] == first["messages"]
    assert then["messages"][-1] == {"role": "assistant", "content": shown}
    assert then["continue_final_message"] and not then["add_generation_prompt"]
    # Exact: the two parts are what one request for them all gives.
    body = {**first, "max_tokens": NUM_CUT_TOKENS + NUM_CONTINUED_TOKENS}
    body.update(stream=False, stream_options=None)
    with web_server.http() as http:
        whole = http.post("/v1/chat/completions", json=body).json()
    assert stored_messages(browser)[-1]["text"] == whole["choices"][0]["message"]["content"]


def test_every_asset_comes_from_the_server(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map((entry) => entry.name)"
    )
    assert any(url.endswith("/web/app.js") for url in loaded)
    assert any(url.endswith("/web/vendor/markdown-it.min.js") for url in loaded)
    assert any(url.endswith("/web/vendor/highlight-python.min.js") for url in loaded)
    assert all(url.startswith(web_server.url + "/") for url in loaded), loaded


def test_edit_sits_in_the_bubble_corner(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    set_value(browser, "max-tokens", "4")
    send(browser, "hi")
    wait_finished(browser)
    question = messages(browser)[0]
    edit = action(question, "edit")
    opacity = "return getComputedStyle(arguments[0]).opacity"
    # On the text's line, inside the bubble: the bubble is one line tall.
    text = question.find_element(By.CLASS_NAME, "text").rect
    assert edit.rect["y"] < text["y"] + text["height"]
    assert edit.rect["x"] + edit.rect["width"] <= question.rect["x"] + question.rect["width"]
    assert question.rect["height"] < 3 * text["height"]
    # A real button: focused (as Tab would), it shows and Enter opens the edit box. (Where
    # a mouse can hover it is hidden until then; headless Chromium matches hover: none.)
    browser.execute_script("arguments[0].focus()", edit)
    assert browser.execute_script(opacity, edit) == "1"
    edit.send_keys(Keys.ENTER)
    assert question.find_element(By.CSS_SELECTOR, "textarea.edit").is_displayed()


def test_screenshots(browser, web_server: LiveServer, tmp_path: Path) -> None:
    """A finished conversation, saved for a person to look at (desktop and phone width)."""
    with pretending_the_model_sees_images(browser):
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
    with pretending_the_model_sees_images(browser):
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
