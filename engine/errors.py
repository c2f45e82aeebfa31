"""Errors the engine raises for bad input. All are ValueErrors, so callers that only
know "the request was bad" can catch one type; the server maps each to an HTTP status."""


class EngineError(ValueError):
    """Base class of every user-facing engine error."""


class InvalidRequestError(EngineError):
    """A request the engine cannot serve as given (bad prompt, bad sampling parameters)."""


class PromptTooLongError(InvalidRequestError):
    """The prompt (plus at least one generated token) does not fit the model's context."""

    def __init__(self, num_prompt_tokens: int, max_model_len: int):
        self.num_prompt_tokens = num_prompt_tokens
        self.max_model_len = max_model_len
        super().__init__(
            f"the prompt has {num_prompt_tokens} tokens but the model's context holds "
            f"{max_model_len} (and at least one token must be left to generate)"
        )


class ModelLoadError(EngineError):
    """A model that cannot be found, read or built."""


class UnsupportedModelError(ModelLoadError):
    """A checkpoint of an architecture or format the engine does not implement."""


class QuantizationError(EngineError):
    """A quantization run that cannot start as asked (bad options, calibration data or
    output directory); raised before any long work begins."""
