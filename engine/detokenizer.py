"""Incremental, streaming-safe detokenization and stop strings.

A request's text is released a piece at a time as its tokens arrive, the way vLLM does
it: decode a small window of recent tokens and release what the newest tokens added to
it. Decoding the window rather than the newest token alone keeps context-dependent
spacing right (SentencePiece decoders drop the leading space of a text's first token);
decoding it rather than the whole output keeps the per-token cost constant.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

# Prompt tokens decoded as context for the first generated token: enough that a
# SentencePiece decoder does not take that token for the start of the text (and drop its
# leading space), few enough to keep every decode small.
NUM_CONTEXT_TOKENS = 5

# What a byte-level or byte-fallback decoder gives for a UTF-8 character whose last
# bytes are in tokens not generated yet.
_REPLACEMENT_CHAR = "\ufffd"


def token_text(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """The text of one token on its own, for logprob listings.

    This is ``decode([token_id])`` with special tokens kept, so it is U+FFFD for a token
    holding part of a UTF-8 character, and a SentencePiece token loses its leading space
    (the decoder takes it for the start of a text).
    """
    return tokenizer.decode(
        [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )


class IncrementalDetokenizer:
    """Turns a request's generated token ids into text, a piece at a time, for streaming.

    Contract, for a generation that hits no stop string, with D = ``tokenizer.decode``
    (special tokens skipped or not as asked, clean-up of spaces off):
    ``"".join(add_token(t) for t in generated) + flush()`` equals
    ``D(context + generated)[len(D(context)):]``, where context is the last
    ``NUM_CONTEXT_TOKENS`` prompt tokens, provided ``D(context)`` does not end in a
    character cut short. For byte-level BPE decoders (GPT-2, Llama 3, Qwen) that is
    exactly ``D(generated)``. For SentencePiece / Metaspace decoders it is the text the
    generated tokens add after the prompt (for a non-empty prompt, usually with the
    leading space that ``D(generated)`` alone would drop); for an empty prompt it is
    ``D(generated)``.

    No piece released by ``add_token`` ends in a U+FFFD standing for a character whose
    bytes are still to come: such text is held until the character completes (or until
    ``flush``, which releases what the decoder gives for the incomplete end).

    Stop strings (OpenAI semantics): the text is cut right before the earliest occurrence
    of any of them, which is never released, not even in part; then ``stopped`` is True
    and nothing more is released. Text that may be the start of a stop string is held
    back until it is known not to be; ``flush`` releases it if no stop string completed.

    Clean-up of spaces (``clean_up_tokenization_spaces``) is never applied: it rewrites
    text around punctuation after the fact, which a stream cannot take back.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_token_ids: list[int],
        stop: Sequence[str] = (),
        skip_special_tokens: bool = True,
    ):
        # NOTE: SamplingParams rejects empty stop strings; one would match everywhere.
        assert all(stop), "stop strings must not be empty"
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._skip_special_tokens = skip_special_tokens
        self._token_ids = list(prompt_token_ids[-NUM_CONTEXT_TOKENS:])
        # The window decoded each step is _token_ids[_prefix_offset:]; the text of
        # _token_ids[:_read_offset] has been handed to the stop-string check already.
        self._prefix_offset = 0
        self._read_offset = len(self._token_ids)
        # Decoded text held back because it may be the start of a stop string.
        self._pending = ""
        self._text = ""
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything released so far."""
        return self._text

    def add_token(self, token_id: int) -> str:
        """Takes the next generated token; returns the text that may be released now
        ("" while held back, and always after a stop string)."""
        if self.stopped:
            return ""
        self._token_ids.append(token_id)
        return self._release(self._read_new_text(final=False), final=False)

    def flush(self) -> str:
        """Releases what was held back, at the end of generation (length, eos, abort).

        Call once, after the last ``add_token``. Returns "" once stopped: the part of a
        stop string that was held back is never released.
        """
        if self.stopped:
            return ""
        return self._release(self._read_new_text(final=True), final=True)

    def _decode(self, token_ids: list[int]) -> str:
        return self._tokenizer.decode(
            token_ids,
            skip_special_tokens=self._skip_special_tokens,
            clean_up_tokenization_spaces=False,
        )

    def _read_new_text(self, final: bool) -> str:
        """The text the tokens after ``_read_offset`` add to the window, or "" while it
        is not final (it ends in an incomplete character, or adds nothing yet)."""
        prefix_text = self._decode(self._token_ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._token_ids[self._prefix_offset :])
        # NOTE: holding also when nothing was added (a skipped special token) keeps the
        # window from starting at tokens that decode to nothing, where a SentencePiece
        # decoder would take the next token for the start of the text.
        if not final and (
            len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT_CHAR)
        ):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self._token_ids)
        return new_text[len(prefix_text) :]

    def _release(self, new_text: str, final: bool) -> str:
        """Runs the stop-string check over the held-back text plus ``new_text`` and
        returns the part that may be released."""
        text = self._pending + new_text
        # The held-back text is shorter than the longest stop string, so this search,
        # like the partial-match one below, costs O(len(new_text) + stop lengths).
        stop_at = min((i for s in self._stop if (i := text.find(s)) >= 0), default=None)
        if stop_at is not None:
            self.stopped = True
            self._pending = ""
            released = text[:stop_at]
        else:
            num_held = 0 if final else self._num_partial_stop_chars(text)
            self._pending = text[len(text) - num_held :]
            released = text[: len(text) - num_held]
        self._text += released
        return released

    def _num_partial_stop_chars(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins some stop string."""
        longest = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
