"""The checkpoint's tokenizer and its chat template (or one the user supplies)."""

from __future__ import annotations

from pathlib import Path

import jinja2
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from engine.errors import InvalidRequestError, ModelLoadError


def load_tokenizer(model_dir: Path, added_tokens: tuple[str, ...] = ()) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``model_dir``, plus ``added_tokens`` as special tokens (for
    models whose own code adds them at load: NVILA's media tokens)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"cannot load the tokenizer of {model_dir}: {e}") from None
    tokenizer.add_tokens(list(added_tokens), special_tokens=True)
    return tokenizer


class ChatTemplate:
    """Renders OpenAI-style messages with the template in ``template_file`` when given,
    else ``model_template`` (the conversation format a model family was trained with,
    when the family's own code builds prompts without the tokenizer's template), else
    the tokenizer's Jinja chat template."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        template_file: str | None = None,
        model_template: str | None = None,
    ):
        self.tokenizer = tokenizer
        self.template = model_template
        if template_file is not None:
            try:
                self.template = Path(template_file).read_text()
            except OSError as e:
                raise ModelLoadError(f"cannot read chat template {template_file}: {e}") from None

    @property
    def available(self) -> bool:
        return self.template is not None or self.tokenizer.chat_template is not None

    @property
    def source(self) -> str | None:
        """The template's Jinja text (a tokenizer's named templates joined), if any."""
        template = self.template or self.tokenizer.chat_template
        return "\n".join(template.values()) if isinstance(template, dict) else template

    def render(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        continue_final_message: bool = False,
    ) -> str:
        """``tools``: OpenAI tool definitions, for templates that write them in. With
        ``continue_final_message`` the last message (an assistant's) is left open, its
        text the start of the answer (transformers cuts the rendering after it), instead
        of a generation prompt opening a new one."""
        if not self.available:
            raise InvalidRequestError(
                "this model has no chat template; start the engine with a template file "
                "(--chat-template FILE) or send plain completions"
            )
        if not messages:
            raise InvalidRequestError("messages must not be empty")
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                chat_template=self.template,
                add_generation_prompt=not continue_final_message,
                continue_final_message=continue_final_message,
                tokenize=False,
            )
        # ValueError: a continued final message that the template does not write out.
        except (jinja2.TemplateError, ValueError) as e:
            raise InvalidRequestError(f"the chat template rejected the messages: {e}") from None
