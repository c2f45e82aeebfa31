"""VILA's conversation formats, as Jinja chat templates.

VILA never calls the tokenizer's chat template: its own code (``llava/conversation.py``
in NVlabs/VILA) builds each prompt from a per-model conversation mode, and the model was
trained on exactly those strings. So a VILA checkpoint is rendered with the mode of its
language model family, whatever template its llm/ tokenizer carries; ``--chat-template``
still overrides it. VILA1.5-3B and -13B (Llama-2 tokenizers) use ``vicuna_v1``,
Llama-3-VILA1.5-8B uses ``llama_3``. NVILA's code instead sets the llm tokenizer's chat
template to the file its config's ``chat_template`` names (``qwen2``), else keeps the
tokenizer's own (``llava/model/language_model/builder.py``).
"""

from __future__ import annotations

from engine.errors import UnsupportedModelError

# "SYSTEM USER: q ASSISTANT: a</s>USER: q2 ASSISTANT:" -- the separator after an answer
# is the EOS alone, so only the first USER follows a space.
VICUNA_V1 = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- messages[0]['content'] -}}{%- set messages = messages[1:] -%}"
    "{%- else -%}"
    "{{- 'A chat between a curious user and an artificial intelligence assistant. The "
    "assistant gives helpful, detailed, and polite answers to the user\\'s questions.' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- (' ' if loop.first else '') + 'USER: ' + message['content'] -}}"
    "{%- else -%}{{- ' ASSISTANT: ' + message['content'] + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- ' ASSISTANT:' -}}{%- endif -%}"
)

# Llama 3's headers with VILA's own default system prompt.
LLAMA_3 = (
    "{{- bos_token + '<|start_header_id|>system<|end_header_id|>\\n\\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- messages[0]['content'] -}}{%- set messages = messages[1:] -%}"
    "{%- else -%}"
    "{{- 'You are a helpful language and vision assistant. You are able to understand the "
    "visual content that the user provides, and assist the user with a variety of tasks "
    "using natural language.' -}}"
    "{%- endif -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{{- message['content'] + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
)


# NVILA's chat_templates/qwen2.jinja as its builder loads it (indents and line breaks
# removed): ChatML with "You are a helpful assistant" (no period) unless a system
# message is given.
QWEN2 = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages if message['content'] is not none -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
NVILA_TEMPLATES = {"qwen2": QWEN2}


def nvila_conversation_template(name: str | None) -> str | None:
    """The template an NVILA config names (None: the llm tokenizer's own)."""
    if name is None:
        return None
    if name not in NVILA_TEMPLATES:
        raise UnsupportedModelError(
            f"NVILA chat_template {name!r} is not supported; "
            f"supported: {', '.join(NVILA_TEMPLATES)}"
        )
    return NVILA_TEMPLATES[name]


def vila_conversation_template(tokenizer) -> str:
    """The conversation format of the language model behind ``tokenizer``."""
    return LLAMA_3 if "<|start_header_id|>" in tokenizer.get_vocab() else VICUNA_V1
