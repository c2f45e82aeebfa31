"""Replies as rich text: markdown while it streams, code blocks with their language and
a Copy button, and hostile replies that do nothing. The test writes the replies
(STUB_CHAT): the tiny model's own are random text."""

from __future__ import annotations

import pytest

from tests.server.conftest import LiveServer
from tests.web.conftest import ARTIFACTS
from tests.web.page import (
    STUB_CHAT,
    chat_requests,
    last_message,
    open_page,
    send,
    wait_finished,
)

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

FIRST_HALF = (
    "## Plan\n\nSome **bold**, *emphasis* and `inline code`:\n\n- one\n- two\n\n```python\n"
)
SECOND_HALF = (
    "def hello():\n    return '<b>hi</b>'\n```\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\nSee [the docs](https://example.com/docs)."
)
HOSTILE = """<script>window.__pwned = "script"</script>
<img src=x onerror="window.__pwned = 'img'">
<a href="javascript:window.__pwned = 'raw link'">raw link</a>
[js](javascript:window.__pwned='js') [JS](JaVaScRiPt:window.__pwned='JS')
[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)
<javascript:window.__pwned='autolink'>
![tracker]({server}/tracker.png) and ![]({server}/tracker2.png)
<iframe src="{server}/"></iframe>
"""


def stub_reply(browser, *pieces: str, finish: str = "stop") -> None:
    """Streams ``pieces`` as the reply to the message just sent, one read each."""
    WebDriverWait(browser, 10).until(lambda b: b.execute_script("return window.__stream"))
    for piece in pieces:
        browser.execute_script("window.__stream.push(arguments[0])", piece)
    browser.execute_script("window.__stream.finish(arguments[0])", finish)


def reply_body(browser):
    return last_message(browser).find_element(By.CLASS_NAME, "text")


def test_markdown_is_rendered_while_it_streams(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    browser.execute_script(STUB_CHAT)
    send(browser, "Make a plan")
    WebDriverWait(browser, 10).until(lambda b: b.execute_script("return window.__stream"))
    browser.execute_script("window.__stream.push(arguments[0])", FIRST_HALF)
    # Mid-stream, the open fence is already a code block.
    WebDriverWait(browser, 10).until(lambda b: reply_body(b).find_elements(By.TAG_NAME, "pre"))
    assert last_message(browser).get_attribute("data-state") == "streaming"
    body = reply_body(browser)
    assert body.find_element(By.TAG_NAME, "h2").text == "Plan"
    assert body.find_element(By.TAG_NAME, "strong").text == "bold"
    assert body.find_element(By.TAG_NAME, "em").text == "emphasis"
    assert body.find_element(By.CSS_SELECTOR, "p code").text == "inline code"
    assert [li.text for li in body.find_elements(By.CSS_SELECTOR, "ul li")] == ["one", "two"]
    stub_reply(browser, SECOND_HALF)
    wait_finished(browser)

    body = reply_body(browser)
    assert body.find_element(By.CSS_SELECTOR, ".code-head .language").text == "python"
    code = body.find_element(By.CSS_SELECTOR, "pre code")
    assert code.text == "def hello():\n    return '<b>hi</b>'"
    assert code.find_elements(By.CSS_SELECTOR, ".hljs-keyword"), "not highlighted"
    cells = [td.text for td in body.find_elements(By.CSS_SELECTOR, "table td")]
    assert cells == ["1", "2"]
    link = body.find_element(By.CSS_SELECTOR, "a")
    assert link.get_attribute("href") == "https://example.com/docs"
    assert link.get_attribute("rel") == "noopener noreferrer"
    # Max tokens left empty: the server lets the reply fill the context.
    assert "max_tokens" not in chat_requests(browser)[-1]
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(ARTIFACTS / "web-markdown.png"))


def test_copy_puts_the_code_on_the_clipboard(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {
            "origin": web_server.url,
            "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"],
        },
    )
    browser.execute_script(STUB_CHAT)
    send(browser, "Code please")
    stub_reply(browser, "Here:\n\n```sh\necho 'a  b' | wc -c\n```\n\n```\nplain\n```")
    wait_finished(browser)
    first, second = reply_body(browser).find_elements(By.CSS_SELECTOR, ".code-block")
    assert second.find_element(By.CLASS_NAME, "language").text == "code"
    copy = first.find_element(By.CLASS_NAME, "copy")
    copy.click()
    WebDriverWait(browser, 5).until(lambda b: copy.text == "Copied")
    clipboard = browser.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], (e) => arguments[0](String(e)))"
    )
    assert clipboard == "echo 'a  b' | wc -c\n"


def test_hostile_replies_do_nothing(browser, web_server: LiveServer) -> None:
    open_page(browser, web_server)
    browser.execute_script(STUB_CHAT)
    send(browser, "Be evil")
    stub_reply(browser, HOSTILE.format(server=web_server.url))
    wait_finished(browser)
    body = reply_body(browser)
    # Raw HTML shows as the text it is.
    assert '<script>window.__pwned = "script"</script>' in body.text
    assert "<iframe" in body.text
    for tag in ("script", "img", "iframe", "a"):
        assert body.find_elements(By.TAG_NAME, tag) == [], tag
    handlers = browser.execute_script(
        """return [...arguments[0].querySelectorAll("*")].flatMap((e) =>
             e.getAttributeNames().filter((name) => name.startsWith("on")))""",
        body,
    )
    assert handlers == []
    assert "[image not shown: tracker]" in body.text
    assert "[image not shown]" in body.text
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map((entry) => entry.name)"
    )
    assert not [url for url in loaded if "tracker" in url]
    assert browser.execute_script("return window.__pwned") is None
