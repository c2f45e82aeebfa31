"""continue_final_message (vLLM's): the last, assistant, message is continued rather than
answered. The prompt is transformers' own rendering, and a cut greedy answer continued
is the uncut answer: what the web page's Continue relies on."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tests.server.conftest import LiveServer

pytestmark = pytest.mark.timeout(120)

QUESTION = [{"role": "user", "content": "Name three colours."}]
# NOTE: the random model's answers often hold a token that is part of a character (text
# shows U+FFFD, which no text carries back); this greeting's first tokens are whole
# characters, so its cut text tokenizes back to the same tokens (asserted below).
GREETING = [{"role": "user", "content": "Hello"}]
NUM_CUT_TOKENS = 10
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


def answer(server: LiveServer, messages: list[dict], max_tokens: int, **extra) -> dict:
    body = {"model": server.model, "messages": messages, "max_tokens": max_tokens}
    body.update(temperature=0, ignore_eos=True, **extra)
    with server.http() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_prompt_is_transformers_continued_rendering(server: LiveServer, tiny_llama) -> None:
    messages = [*QUESTION, {"role": "assistant", "content": "Red, green and"}]
    expected = AutoTokenizer.from_pretrained(tiny_llama).apply_chat_template(
        messages,
        add_generation_prompt=False,
        continue_final_message=True,
        tokenize=True,
        return_dict=False,
    )
    prepared = server.llm.engine.inputs.prepare_chat(messages, continue_final_message=True)
    assert prepared.token_ids == list(expected)
    usage = answer(server, messages, 1, **CONTINUE)["usage"]
    assert usage["prompt_tokens"] == len(expected)
    # Not the new-turn prompt: that one closes the message and opens another.
    assert server.llm.engine.inputs.prepare_chat(messages).token_ids != list(expected)


def test_a_cut_answer_continued_is_the_uncut_answer(server: LiveServer) -> None:
    whole = answer(server, GREETING, 24)["choices"][0]["message"]["content"]
    cut = answer(server, GREETING, NUM_CUT_TOKENS)
    assert cut["choices"][0]["finish_reason"] == "length"
    head = cut["choices"][0]["message"]["content"]
    assert whole.startswith(head) and len(head) < len(whole)
    messages = [*GREETING, {"role": "assistant", "content": head}]
    continued = answer(server, messages, 24 - NUM_CUT_TOKENS, **CONTINUE)
    # The continued prompt is the question's prompt and the cut answer's own tokens.
    num_prompt_tokens = cut["usage"]["prompt_tokens"] + NUM_CUT_TOKENS
    assert continued["usage"]["prompt_tokens"] == num_prompt_tokens
    assert head + continued["choices"][0]["message"]["content"] == whole


@pytest.mark.parametrize(
    ("messages", "extra", "param"),
    [
        (QUESTION, CONTINUE, "continue_final_message"),
        (
            [*QUESTION, {"role": "assistant", "content": "Red"}],
            {"continue_final_message": True},
            "add_generation_prompt",
        ),
        (QUESTION, {"add_generation_prompt": False}, "add_generation_prompt"),
    ],
)
def test_bad_continuations_are_400s(server: LiveServer, messages, extra, param) -> None:
    body = {"model": server.model, "messages": messages, "max_tokens": 2, **extra}
    with server.http() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
