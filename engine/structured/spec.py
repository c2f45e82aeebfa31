"""What a request's output must match, as the API says it; compiled elsewhere."""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import InvalidRequestError


@dataclass(frozen=True)
class StructuredOutputSpec:
    """Exactly one constraint: a JSON schema (as JSON text), any JSON object, a regular
    expression, one of a list of strings, or a grammar (EBNF)."""

    json_schema: str | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None

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
