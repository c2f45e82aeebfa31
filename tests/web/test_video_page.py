"""Videos on the chat page, in headless Chromium against a real server over a tiny
Qwen2.5-VL: a video picked or dropped shows its first frame as a thumbnail, goes as a
video_url data URL of the file's bytes, and is answered."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine.qwen2_5_vl_fixtures import build_tiny_qwen2_5_vl
from tests.engine.video_fixtures import make_video
from tests.server.conftest import LiveServer, live_server
from tests.web.page import chat_requests, messages, open_page, send, wait_finished

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

VIDEO = make_video(num_frames=20, width=112, height=84, fps=10, gop=8)
# HTMLMediaElement.readyState: the frame at the current position (the first) is decoded.
HAVE_CURRENT_DATA = 2


@pytest.fixture(scope="module")
def qwen_web_server(tmp_path_factory) -> Iterator[LiveServer]:
    with live_server(build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen_web"))) as live:
        yield live


def first_frame_shown(browser, selector: str) -> bool:
    return browser.execute_script(
        "const v = document.querySelector(arguments[0]);"
        "return v !== null && v.readyState >= arguments[1] && v.videoWidth === 112;",
        selector,
        HAVE_CURRENT_DATA,
    )


def test_a_picked_video_is_shown_sent_and_answered(
    browser, qwen_web_server: LiveServer, tmp_path: Path
) -> None:
    open_page(browser, qwen_web_server)
    path = tmp_path / "clip.mp4"
    path.write_bytes(VIDEO)
    browser.find_element(By.ID, "file").send_keys(str(path))
    WebDriverWait(browser, 10).until(lambda b: first_frame_shown(b, "#thumbs video"))
    label = "#thumbs button[aria-label='Remove video 1']"
    assert browser.find_elements(By.CSS_SELECTOR, label)
    send(browser, "What happens?")
    reply = wait_finished(browser, timeout=60)
    assert reply.get_attribute("data-state") == "done" and reply.text
    question = messages(browser)[-2]
    assert question.find_element(By.TAG_NAME, "video").get_attribute("aria-label") == (
        "attached video"
    )
    content = chat_requests(browser)[-1]["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "What happens?"}
    assert content[1]["type"] == "video_url"
    header, data = content[1]["video_url"]["url"].split(",", 1)
    assert header == "data:video/mp4;base64" and base64.b64decode(data) == VIDEO


def test_a_dropped_video_is_attached(browser, qwen_web_server: LiveServer) -> None:
    open_page(browser, qwen_web_server)
    browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "clip.mp4", { type: "video/mp4" }));
        data.items.add(new File(["not a video"], "notes.txt", { type: "text/plain" }));
        document.getElementById("composer")
          .dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true }));
        """,
        base64.b64encode(VIDEO).decode(),
    )
    WebDriverWait(browser, 10).until(lambda b: first_frame_shown(b, "#thumbs video"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#thumbs figure")) == 1
