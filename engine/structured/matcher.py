"""One sequence's place in its grammar: which tokens may come next, advanced token by token."""

from __future__ import annotations

import llguidance


class GrammarMatcher:
    """Follows one sequence's output tokens through its grammar (no torch here).

    NOTE: it has consumed exactly the sequence's output tokens, and the sequence keeps
    those through preemption, so a recomputed sequence's matcher needs nothing done.
    EOS is allowed only once the grammar is complete; once the grammar cannot go on,
    EOS is all it allows.
    """

    def __init__(self, matcher: llguidance.LLMatcher, eos_token_id: int, num_mask_words: int):
        self._matcher = matcher
        self.eos_token_id = eos_token_id
        # A mask has one bit per token, 32 tokens to an int32 word.
        self.num_mask_words = num_mask_words
        self.is_finished = False

    def write_mask(self, address: int) -> None:
        """Write the next token's mask (``num_mask_words`` int32 words) at ``address``.
        Drops the GIL while it works."""
        self._matcher.unsafe_compute_mask_ptr(address, 4 * self.num_mask_words)

    def accept(self, token_id: int) -> None:
        """Advance past ``token_id``. A token the grammar does not allow is a bug in the
        masking: it raises (and the core fails that request alone)."""
        if not self._matcher.consume_token(token_id):
            raise RuntimeError(
                f"the grammar refused token {token_id}: {self._matcher.get_error()[:200]}"
            )
        if token_id == self.eos_token_id:
            self.is_finished = True
