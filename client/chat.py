"""``edgechat chat``: a terminal chat with any OpenAI-compatible server, over HTTP only
(the ``openai`` package; never the engine). Streams each reply as it comes, keeps the
conversation, and reports tokens per second."""

from __future__ import annotations

import base64
import mimetypes
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import openai

HELP = "commands: /reset forgets the conversation, /exit (or Ctrl-D) quits"


@dataclass(frozen=True)
class ReplyStats:
    num_tokens: int
    seconds: float
    first_token_seconds: float | None

    def __str__(self) -> str:
        rate = self.num_tokens / self.seconds if self.seconds > 0 else 0.0
        first = (
            ""
            if self.first_token_seconds is None
            else f", first after {self.first_token_seconds:.2f} s"
        )
        return f"[{self.num_tokens} tokens in {self.seconds:.2f} s, {rate:.1f} tok/s{first}]"


def image_data_url(path: Path) -> str:
    """The file as a ``data:`` URL, how OpenAI's API takes inline images (and vLLM's
    ``video_url`` parts, videos)."""
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


class ChatSession:
    """One conversation. ``images`` (data URLs; ``data:video/...`` ones are sent as
    videos) go with the next message sent, once, whether or not the server takes them."""

    def __init__(
        self,
        client: openai.OpenAI,
        model: str,
        system: str | None = None,
        images: list[str] | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ):
        self.client = client
        self.model = model
        self.system = system
        self.pending_images = list(images or [])
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.messages: list[dict] = []
        self.last_stats: ReplyStats | None = None
        self.reset()

    def reset(self) -> None:
        self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]

    def reply(self, text: str) -> Iterator[str]:
        """Stream the answer to ``text``. The exchange joins the conversation only once
        the answer is complete (an error or Ctrl-C leaves the conversation as it was)."""
        message = self._user_message(text)
        options = {"temperature": self.temperature, "max_completion_tokens": self.max_tokens}
        start = time.perf_counter()
        first_token_at = None
        num_tokens = 0
        pieces: list[str] = []
        with self.client.chat.completions.create(
            model=self.model,
            messages=[*self.messages, message],
            stream=True,
            stream_options={"include_usage": True},
            **{key: value for key, value in options.items() if value is not None},
        ) as stream:
            for chunk in stream:
                if chunk.usage is not None:
                    num_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta.content:
                        if first_token_at is None:
                            first_token_at = time.perf_counter()
                        pieces.append(choice.delta.content)
                        yield choice.delta.content
        seconds = time.perf_counter() - start
        first = None if first_token_at is None else first_token_at - start
        self.last_stats = ReplyStats(num_tokens, seconds, first)
        self.messages += [message, {"role": "assistant", "content": "".join(pieces)}]

    def _user_message(self, text: str) -> dict:
        if not self.pending_images:
            return {"role": "user", "content": text}
        parts: list[dict] = [{"type": "text", "text": text}]
        parts += [_media_part(url) for url in self.pending_images]
        self.pending_images = []
        return {"role": "user", "content": parts}


def _media_part(url: str) -> dict:
    kind = "video_url" if url.startswith("data:video/") else "image_url"
    return {"type": kind, kind: {"url": url}}


def repl(session: ChatSession, read: Callable[[str], str], out: TextIO) -> None:
    """Read messages with ``read`` (``input``-like: raises EOFError at the end) until
    /exit, streaming each reply to ``out``. Server errors are shown, not fatal."""
    while True:
        try:
            text = read("you> ").strip()
        except EOFError:
            out.write("\n")
            return
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            out.write("[conversation forgotten]\n")
            continue
        if not text:
            continue
        out.write("assistant> ")
        try:
            for piece in session.reply(text):
                out.write(piece)
                out.flush()
        except openai.APIStatusError as e:
            out.write(f"\n[server error {e.status_code}: {_message(e)}]\n")
            continue
        except openai.APIError as e:
            out.write(f"\n[error: {e.message}]\n")
            continue
        except KeyboardInterrupt:
            out.write("\n[interrupted]\n")
            continue
        out.write(f"\n{session.last_stats}\n")


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return error.message


def main(
    url: str,
    api_key: str | None,
    model: str | None = None,
    images: list[str] | None = None,
    system: str | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    read: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
) -> int:
    """Chat with the server at ``url`` (its ``/v1`` API) on the terminal."""
    try:
        image_urls = [image_data_url(Path(path)) for path in images or []]
    except OSError as e:
        print(f"edgechat chat: cannot read image: {e}", file=sys.stderr)
        return 2
    # The openai package insists on a key; servers started without one ignore it.
    client = openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key=api_key or "none")
    try:
        cards = client.models.list().data
    except openai.APIError as e:
        print(f"edgechat chat: cannot list the models at {url}: {e.message}", file=sys.stderr)
        return 2
    card = next((c for c in cards if c.id == model), None) if model else cards[0]
    if card is None:
        print(f"edgechat chat: the server does not serve {model!r}", file=sys.stderr)
        return 2
    demo = " (DEMO: random weights, meaningless output)" if getattr(card, "demo", False) else ""
    out.write(f"chatting with {card.id} at {url}{demo}\n{HELP}\n")
    session = ChatSession(client, card.id, system, image_urls, temperature, max_tokens)
    repl(session, read, out)
    return 0
