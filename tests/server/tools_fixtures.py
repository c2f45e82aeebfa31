"""A tiny random Llama whose chat template writes tools as Qwen2.5's does, and whose
tokenizer has whole canned answers as single tokens: a ``logit_bias`` on one of them
makes the random model say exactly that answer, to be parsed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import transformers

from engine.demo import write_tokenizer
from tests.conftest import TINY

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Oslo"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER_TOOL, TIME_TOOL]

CALL_ANSWER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TEXT_ANSWER = "It is sunny in Paris."

# Qwen2.5-Instruct's template, as far as tools go: the tools as JSON in the system
# message, calls in <tool_call> tags, results as <tool_response> in a user turn.
QWEN_TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n\nYou are provided with function signatures within <tools></tools> XML tags:"
    "\n<tools>{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "{%- elif messages[0].role == 'system' %}"
    "<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant"
    "{%- if message.content %}\n{{ message.content }}{% endif %}"
    "{%- for tool_call in message.tool_calls or [] %}"
    '\n<tool_call>\n{"name": "{{ tool_call.function.name }}", "arguments": '
    "{{ tool_call.function.arguments | tojson }}}\n</tool_call>"
    "{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tools_model(out_dir: Path) -> Path:
    tokenizer = write_tokenizer(out_dir)
    tokenizer.add_tokens([CALL_ANSWER, TEXT_ANSWER])
    tokenizer.chat_template = QWEN_TOOLS_TEMPLATE
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # Room for the tools' JSON in the prompt.
        **{**TINY, "max_position_embeddings": 1024},
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(out_dir)
    return out_dir


def token_id(model_dir: Path, text: str) -> int:
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    [token] = tokenizer.encode(text, add_special_tokens=False)
    return token


def rendered_num_tokens(model_dir: Path, messages: list[dict], tools: list[dict]) -> int:
    """The prompt's length as transformers renders it, tool-call arguments as objects."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    messages = copy.deepcopy(messages)
    for message in messages:
        for call in message.get("tool_calls") or []:
            function = call["function"]
            function["arguments"] = json.loads(function["arguments"])
    text = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=True, tokenize=False
    )
    return len(tokenizer(text, add_special_tokens=False).input_ids)
