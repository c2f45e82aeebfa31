"""Errors the engine raises for bad input. All are ValueErrors, so callers that only
know "the request was bad" can catch one type; the server maps each to an HTTP status."""


class EngineError(ValueError):
    """Base class of every user-facing engine error."""


class InvalidRequestError(EngineError):
    """A request the engine cannot serve as given (bad prompt, bad sampling parameters).
    ``param`` names the SamplingParams field at fault, when one is."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class PromptTooLongError(InvalidRequestError):
    """The prompt, plus at least one generated token (or the ``max_tokens`` asked for,
    when given), does not fit the model's context."""

    def __init__(self, num_prompt_tokens: int, max_model_len: int, max_tokens: int | None = None):
        self.num_prompt_tokens = num_prompt_tokens
        self.max_model_len = max_model_len
        if max_tokens is None:
            message = (
                f"the prompt has {num_prompt_tokens} tokens but the model's context holds "
                f"{max_model_len} (and at least one token must be left to generate)"
            )
        else:
            message = (
                f"the model's context holds {max_model_len} tokens, but this request asks "
                f"for {num_prompt_tokens + max_tokens}: {num_prompt_tokens} in the prompt and "
                f"max_tokens {max_tokens}; shorten the prompt or lower max_tokens"
            )
        super().__init__(message)


class ModelLoadError(EngineError):
    """A model that cannot be found, read or built."""


class UnsupportedModelError(ModelLoadError):
    """A checkpoint of an architecture or format the engine does not implement."""


class QuantizationError(EngineError):
    """A quantization run that cannot start as asked (bad options, calibration data or
    output directory); raised before any long work begins."""
