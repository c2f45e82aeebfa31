"""The terminal chat client against a live server."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from client.chat import ChatSession, main
from engine import SamplingParams
from tests.server.conftest import API_KEY, LiveServer

pytestmark = pytest.mark.timeout(120)


def scripted(*lines: str) -> Callable[[str], str]:
    """An ``input`` that answers with ``lines``, then raises EOFError (Ctrl-D)."""
    remaining = list(lines)

    def read(prompt: str) -> str:
        if not remaining:
            raise EOFError
        return remaining.pop(0)

    return read


def test_session_streams_and_keeps_the_conversation(server: LiveServer) -> None:
    session = ChatSession(
        server.openai(), server.model, system="Be brief.", temperature=0, max_tokens=8
    )
    first = "".join(session.reply("Hello"))
    assert session.messages[-1] == {"role": "assistant", "content": first}
    second = "".join(session.reply("And then?"))
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"] * 1 + [
        "user",
        "assistant",
    ]
    # The second request carried the whole conversation.
    expected = server.engine_output(
        server.llm.chat_prompt(session.messages[:-1]), SamplingParams(max_tokens=8, temperature=0)
    )
    assert second == expected.text
    stats = session.last_stats
    assert stats.num_tokens == len(expected.token_ids) and stats.seconds > 0
    assert "tok/s" in str(stats)


def test_repl_commands_and_output(server: LiveServer) -> None:
    out = io.StringIO()
    read = scripted("Hello", "", "/reset", "Again", "/exit", "never read")
    assert main(server.url, API_KEY, temperature=0, max_tokens=4, read=read, out=out) == 0
    text = out.getvalue()
    assert text.startswith(f"chatting with {server.model} at {server.url}\n")
    assert text.count("assistant> ") == 2 and text.count("tok/s") == 2
    assert "[conversation forgotten]" in text


def test_images_are_sent_and_refused_with_a_clear_message(
    server: LiveServer, tmp_path: Path
) -> None:
    image = tmp_path / "pixel.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16)
    out = io.StringIO()
    read = scripted("What is in this picture?", "Just text now")
    assert main(server.url, API_KEY, images=[str(image)], max_tokens=3, read=read, out=out) == 0
    text = out.getvalue()
    assert "[server error 400: messages[0].content[1]: this model does not accept images]" in text
    # The failed exchange did not join the conversation, and the next message works.
    assert text.count("tok/s") == 1


def test_unreachable_or_unauthorised_server_exits_2(server: LiveServer, capsys) -> None:
    assert main(server.url, "wrong-key", read=scripted()) == 2
    assert "cannot list the models" in capsys.readouterr().err
    assert main(server.url, API_KEY, model="nope", read=scripted()) == 2
    assert main(server.url, API_KEY, images=["/no/such/image.png"], read=scripted()) == 2


def test_client_never_imports_the_engine() -> None:
    code = (
        "import sys, client.chat, server.cli; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('engine', 'torch')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
