"""Structured outputs: what a request's text must match, and the grammar that holds it.

``spec`` (the constraint, as a request states it) -> ``compiler`` (a grammar over the
model's vocabulary, compiled at intake and cached) -> ``matcher`` (one per sequence,
advanced by the core with each token) -> ``masks`` (the next token's bitmask, filled
while the model runs and applied by the sampler to the constrained rows only).
"""

from engine.structured.compiler import StructuredOutputError
from engine.structured.spec import StructuredOutputSpec

__all__ = ["StructuredOutputSpec", "StructuredOutputError"]
