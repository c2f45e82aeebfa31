"""Structured outputs: what a request's text must match, and the grammar that holds it."""

from engine.structured.spec import StructuredOutputSpec

__all__ = ["StructuredOutputSpec"]
