"""IncrementalDetokenizer against one-shot decoding, with tokenizers trained in the test:
a byte-level BPE (splits emoji and CJK across tokens) and SentencePiece-like Metaspace
BPEs with byte fallback (context-dependent leading spaces, one token per byte)."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from engine.detokenizer import IncrementalDetokenizer, token_text

SPECIALS = ["<unk>", "<s>", "</s>"]
LATIN = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Café crème brûlée, naïve façade, Ångström.",
    "def f(x):\n    return x + 1\n",
]
MULTILINGUAL = ["日本語のテキストです。中文文本。", "Emoji: 😀🎉👍🏽 and 🚀 rockets 🚀🚀."]
TEXTS = [
    "Hello world",
    " leading space",
    "tail space ",
    "日本語のテキスト",
    "emoji 😀🎉👍🏽 rocket🚀",
    "🚀",
    "café crème brûlée",
    "line1\nline2\n\n    indented",
    "mixed 中文 and Ελληνικά ñ",
    "",
]
FOX = "The quick brown fox jumps over the lazy dog."


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        clean_up_tokenization_spaces=False,
    )


@pytest.fixture(scope="module")
def byte_level() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator((LATIN + MULTILINGUAL) * 20, trainer)
    return _wrap(tok)


@pytest.fixture(scope="module", params=["llama2", "metaspace"])
def metaspace(request) -> PreTrainedTokenizerFast:
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    base.train_from_iterator(
        LATIN * 20, trainers.BpeTrainer(vocab_size=200, special_tokens=SPECIALS)
    )
    # Byte-fallback tokens are not learned: add them to the model's vocabulary, so CJK
    # and emoji (absent from the corpus) become one token per UTF-8 byte.
    spec = json.loads(base.to_str())
    vocab = spec["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    if request.param == "llama2":  # the decoder of Llama 2 / Mistral tokenizer.json files
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
    else:
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    return _wrap(tok)


def _encode(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _stream(tok, prompt: list[int], generated: list[int], **kwargs) -> tuple[list[str], str]:
    """Feeds ``generated`` one token at a time: (what each add_token released, flush())."""
    detok = IncrementalDetokenizer(tok, prompt, **kwargs)
    deltas = [detok.add_token(t) for t in generated]
    tail = detok.flush()
    assert detok.text == "".join(deltas) + tail
    return deltas, tail


def test_fixtures_split_characters_across_tokens(byte_level, metaspace):
    # Without tokens that hold part of a character, the U+FFFD tests would prove nothing.
    for tok in (byte_level, metaspace):
        ids = _encode(tok, "emoji 😀🎉 日本語")
        assert any(token_text(tok, i) == "\ufffd" for i in ids)


# prompt_text None: no prompt at all; "": a prompt of BOS alone.
@pytest.mark.parametrize("prompt_text", [None, "", "Question: what is it?"])
def test_byte_level_stream_equals_one_shot_decode(byte_level, prompt_text):
    prompt = [] if prompt_text is None else [1, *_encode(byte_level, prompt_text)]
    for text in TEXTS:
        ids = _encode(byte_level, text)
        deltas, tail = _stream(byte_level, prompt, ids)
        assert "".join(deltas) + tail == byte_level.decode(ids) == text
        assert not any("\ufffd" in d for d in deltas + [tail]), text


@pytest.mark.parametrize("prompt_text", [None, "", "Hello", "Question: what is it?"])
def test_metaspace_stream_equals_decode_in_context_of_prompt(metaspace, prompt_text):
    prompt = [] if prompt_text is None else [1, *_encode(metaspace, prompt_text)]
    for text in TEXTS:
        ids = _encode(metaspace, " " + text)
        deltas, tail = _stream(metaspace, prompt, ids)
        in_context = metaspace.decode(prompt + ids, skip_special_tokens=True)
        expected = in_context[len(metaspace.decode(prompt, skip_special_tokens=True)) :]
        assert "".join(deltas) + tail == expected
        assert not any("\ufffd" in d for d in deltas + [tail]), text
        if not prompt:
            assert expected == metaspace.decode(ids)


def test_metaspace_first_token_keeps_its_space_after_prompt(metaspace):
    deltas, _ = _stream(metaspace, _encode(metaspace, "Hello"), _encode(metaspace, " world"))
    assert deltas[0] == " wor"


def test_character_released_when_its_last_byte_arrives(metaspace):
    ids = _encode(metaspace, "a😀")  # "▁", "a", then one token per byte of the emoji
    assert _stream(metaspace, [], ids)[0] == ["", "a", "", "", "", "😀"]


def test_incomplete_character_at_end_is_flushed_as_decoded(byte_level, metaspace):
    for tok in (byte_level, metaspace):
        ids = _encode(tok, "ok 😀")[:-1]
        deltas, tail = _stream(tok, [], ids)
        assert "\ufffd" not in "".join(deltas)
        assert "".join(deltas) + tail == tok.decode(ids)
        assert tail.endswith("\ufffd")


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens(byte_level, metaspace, skip):
    for tok in (byte_level, metaspace):
        ids = [1, *_encode(tok, "Hello world"), 2, *_encode(tok, " Hello 😀"), 2]
        deltas, tail = _stream(tok, [], ids, skip_special_tokens=skip)
        assert "".join(deltas) + tail == tok.decode(ids, skip_special_tokens=skip)
        assert ("</s>" in "".join(deltas)) is not skip
    # A skipped special token must not make the next SentencePiece token lose its space.
    ids = [*_encode(metaspace, "Hello world"), 2, *_encode(metaspace, " Hello")]
    assert "".join(_stream(metaspace, [], ids)[0]) == "Hello world Hello"


def _stop_stream(tok, text: str, stop: tuple[str, ...]) -> tuple[list[str], str, bool]:
    detok = IncrementalDetokenizer(tok, [1], stop=stop)
    deltas = [detok.add_token(t) for t in _encode(tok, text)]
    return deltas, detok.flush(), detok.stopped


@pytest.mark.parametrize(
    ("stop", "released"),
    [
        (("brown fox",), "The quick "),  # spans tokens
        (("uick",), "The q"),  # starts inside a token's text
        (("The q",), ""),  # at the very start
        (("lazy", "fox"), "The quick brown "),  # the earliest occurrence wins ...
        (("fox", "brown fox"), "The quick "),  # ... even when both end together
    ],
)
def test_stop_string_is_cut_exactly(byte_level, stop, released):
    deltas, tail, stopped = _stop_stream(byte_level, FOX, stop)
    assert stopped and tail == ""
    assert "".join(deltas) == released


def test_stop_string_of_split_character(byte_level):
    deltas, tail, stopped = _stop_stream(byte_level, "hi 😀 there", ("😀",))
    assert stopped and "".join(deltas) + tail == "hi "


def test_partial_stop_match_is_held_then_released(byte_level):
    deltas, tail, stopped = _stop_stream(byte_level, "The quick brown fox", ("fox and",))
    assert not stopped and "".join(deltas) == "The quick brown " and tail == "fox"
    deltas, tail, stopped = _stop_stream(byte_level, FOX, ("fox and",))
    assert not stopped and "".join(deltas) + tail == FOX and tail == ""


def test_nothing_released_after_stop(byte_level):
    detok = IncrementalDetokenizer(byte_level, [], stop=["quick"])
    assert [detok.add_token(t) for t in _encode(byte_level, FOX)][-1] == ""
    assert detok.stopped and detok.text == "The " and detok.flush() == ""


def test_each_decode_is_small(byte_level, monkeypatch):
    # Re-decoding the whole output per token would make a stream quadratic.
    sizes: list[int] = []
    decode = byte_level.decode
    monkeypatch.setattr(
        byte_level, "decode", lambda ids, **kw: sizes.append(len(ids)) or decode(ids, **kw)
    )
    ids = _encode(byte_level, " ".join(LATIN + MULTILINGUAL) * 10)
    assert len(ids) > 500
    deltas, tail = _stream(byte_level, [], ids)
    assert max(sizes) <= 16
    assert "".join(deltas) + tail == byte_level.decode(ids)


def test_token_text(byte_level):
    assert token_text(byte_level, 2) == "</s>"  # special tokens are listed, not skipped
    assert [token_text(byte_level, i) for i in _encode(byte_level, "The quick")] == [
        "The",
        " quick",
    ]
