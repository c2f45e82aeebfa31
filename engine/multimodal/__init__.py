"""Images in requests: decoding and preprocessing (images.py), chat messages with image
parts -> token ids (prompt.py), and the cache of encoded images (embed_cache.py)."""
