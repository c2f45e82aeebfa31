"""Per-request state the scheduler and block manager work on. Pure Python: no torch."""

from __future__ import annotations

import bisect
import enum
import itertools

from engine.sampling import SamplingParams
from engine.structured.matcher import GrammarMatcher


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_seq_ids = itertools.count()


class Sequence:
    """One request's tokens and where their KV lives.

    ``token_ids`` is the prompt followed by the generated tokens. The first
    ``num_computed_tokens`` of them have their KV in the blocks of ``block_table``
    (block ``i`` holds positions ``[i * block_size, (i + 1) * block_size)``); of those, the
    first ``num_cached_tokens`` came from the prefix cache rather than being computed.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        block_size: int,
        images: list | None = None,
        image_positions: list[int] | None = None,
        image_keys: list[bytes] | None = None,
        grammar: GrammarMatcher | None = None,
        image_sizes: list[int] | None = None,
        mrope: object | None = None,
    ):
        self.seq_id = next(_seq_ids)
        self.request_id = request_id
        self.params = params
        self.block_size = block_size
        # Opaque here (engine/multimodal's ImageInput): image i fills the prompt positions
        # image_positions[image_starts[i] : image_starts[i + 1]]; image_sizes gives each
        # image's count (None: all images take the same number).
        self.images = images or []
        self.image_positions = image_positions or []
        if image_sizes is None and self.images:
            image_sizes = [len(self.image_positions) // len(self.images)] * len(self.images)
        self.image_starts = [0, *itertools.accumulate(image_sizes or [])]
        assert self.image_starts[-1] == len(self.image_positions)
        # M-RoPE models' prompt positions (engine/multimodal/mrope.py's MRopePositions),
        # None for every other model and for prompts without images.
        self.mrope = mrope
        # One content hash per image: the same placeholder tokens stand for any image, so
        # the prefix cache keys each block on the images it shows as well as its tokens.
        self.image_keys = image_keys or []
        assert len(self.image_keys) == len(self.images)
        # Features of the images encoded so far, by index: chunked prefill may reach an
        # image's positions over several steps. Dropped once they are in the KV cache.
        self.image_embeds: dict[int, object] = {}
        # Set for a structured output: where its output tokens stand in its grammar.
        self.grammar = grammar
        self.prompt_token_ids = list(prompt_token_ids)
        self.token_ids = list(prompt_token_ids)
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        # Prefix-cache keys of the full blocks, block i's chained from block i - 1's:
        # computed once (token ids never change, not even on preemption).
        self.block_hashes: list[bytes] = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.num_preemptions = 0
        self.finish_reason: str | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_tokens(self, block_index: int) -> list[int]:
        start = block_index * self.block_size
        return self.token_ids[start : start + self.block_size]

    def images_in(self, start: int, end: int) -> range:
        """Indices of the images with positions in ``[start, end)``."""
        if not self.images:
            return range(0)
        positions, starts = self.image_positions, self.image_starts
        lo, hi = bisect.bisect_left(positions, start), bisect.bisect_left(positions, end)
        if hi == lo:
            return range(0)
        return range(bisect.bisect_right(starts, lo) - 1, bisect.bisect_right(starts, hi - 1))

    def block_image_key(self, block_index: int) -> bytes:
        """The keys of the images block ``block_index`` shows part of, in order."""
        start = block_index * self.block_size
        return b"".join(self.image_keys[i] for i in self.images_in(start, start + self.block_size))

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def drop_computed_image_embeds(self) -> None:
        """Free the features of images whose every position is in the KV cache (a
        preempted sequence gets them back from the image cache or the vision tower)."""
        if not self.image_embeds:
            return
        for i in list(self.image_embeds):
            if self.image_positions[self.image_starts[i + 1] - 1] < self.num_computed_tokens:
                del self.image_embeds[i]

    def reset_for_recompute(self) -> None:
        """Preemption by recompute: the KV is dropped, the tokens are kept."""
        self.status = SequenceStatus.WAITING
        self.block_table = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.num_preemptions += 1
