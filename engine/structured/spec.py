"""What a request's output must match, as the API says it; compiled elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import InvalidRequestError


@dataclass(frozen=True)
class StructuredOutputSpec:
    """Exactly one constraint: a JSON schema (as JSON text), any JSON object, a regular
    expression, one of a list of strings, or a grammar (llguidance's Lark syntax, or
    GBNF as llama.cpp writes it).

    ``source`` names where the constraint came from (an API field, such as
    ``response_format``) for error messages; it is not part of the constraint, so two
    specs that differ only there are equal and share a compiled grammar.
    """

    json_schema: str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.choice is not None:
            object.__setattr__(self, "choice", tuple(self.choice))
        given = [
            self.json_schema is not None,
            self.json_object,
            self.regex is not None,
            self.choice is not None,
            self.grammar is not None,
        ]
        if sum(given) != 1:
            raise InvalidRequestError(
                "a structured output takes exactly one of json_schema, json_object, regex, "
                f"choice and grammar; got {sum(given)}"
            )
        if self.choice is not None and (
            not self.choice or not all(isinstance(c, str) and c for c in self.choice)
        ):
            raise InvalidRequestError("a choice must list at least one non-empty string")

    @property
    def kind(self) -> str:
        """Which constraint this is: "json_schema", "json_object", "regex", "choice" or
        "grammar"."""
        for name in ("json_schema", "regex", "choice", "grammar"):
            if getattr(self, name) is not None:
                return name
        return "json_object"
