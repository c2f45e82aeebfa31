"""A bounded LRU cache of image features by content hash, so a follow-up turn about the
same image (which resends it) does not run the vision tower again.

Bounded by bytes (``EngineConfig.image_cache_bytes``, counted in the engine's memory
budget): one LLaVA-1.5 image is 576 x 4096 fp16 features, 4.5 MiB."""

from __future__ import annotations

from collections import OrderedDict

import torch


class ImageEmbeddingCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.num_bytes = 0
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
        """Keep ``features`` (unless they alone exceed the budget), evicting the least
        recently used entries until the cache fits."""
        size = features.numel() * features.element_size()
        if content_hash in self.entries:
            self.entries.move_to_end(content_hash)
            return
        if size > self.max_bytes:
            return
        self.entries[content_hash] = features
        self.num_bytes += size
        while self.num_bytes > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.num_bytes -= evicted.numel() * evicted.element_size()
