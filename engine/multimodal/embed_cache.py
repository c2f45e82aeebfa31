"""A bounded LRU cache of image features by content hash, so a follow-up turn about the
same image (which resends it) does not run the vision tower again.

Bounded by count, not bytes: one LLaVA-1.5 image is 576 x 4096 fp16 features (4.5 MiB),
so the default holds about 72 MiB, outside the KV cache's budget."""

from __future__ import annotations

from collections import OrderedDict

import torch


class ImageEmbeddingCache:
    def __init__(self, max_entries: int = 16):
        self.max_entries = max_entries
        self.entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.num_hits = 0
        self.num_misses = 0

    def get(self, content_hash: bytes) -> torch.Tensor | None:
        """The image's features ``[num_image_tokens, hidden]``, or None (a counted miss)."""
        features = self.entries.get(content_hash)
        if features is None:
            self.num_misses += 1
            return None
        self.entries.move_to_end(content_hash)
        self.num_hits += 1
        return features

    def put(self, content_hash: bytes, features: torch.Tensor) -> None:
        self.entries[content_hash] = features
        self.entries.move_to_end(content_hash)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
