"""Tiny random Qwen3-VL checkpoints shared by the Qwen-VL tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

from tests.conftest import TINY
from tests.engine.qwen2_5_vl_fixtures import build_tiny_qwen_vl

# 16 px patches merged 2 x 2 (32 px tokens), as the Hub's; an 8 x 8 grid of learned
# positions, so image grids both finer and coarser than it are resampled; DeepStack from
# tower layers 2 and 0 (listed out of order) into the first two of three LM layers.
VISION = dict(
    depth=4,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    out_hidden_size=64,
    num_position_embeddings=64,
    deepstack_visual_indexes=[2, 0],
)
TEXT = dict(
    TINY,
    num_hidden_layers=3,
    head_dim=16,
    # 8 frequencies interleaved: time 0, 3, 6; height 1, 4, 7; width 2, 5
    rope_parameters=dict(
        rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3], mrope_interleaved=True
    ),
)

# The chat template of Qwen/Qwen3-VL-*-Instruct (chat_template.json) as published, but for
# its tools branch (the engine renders tool calls with its own protocol code).
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- macro render_content(content, do_vision_count) %}{%- if content is string %}"
    "{{- content }}{%- else %}{%- for item in content %}"
    "{%- if 'image' in item or 'image_url' in item or item.type == 'image' %}"
    "{%- if do_vision_count %}{%- set image_count.value = image_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'video' in item or item.type == 'video' %}"
    "{%- if do_vision_count %}{%- set video_count.value = video_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in item %}{{- item.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- endmacro %}"
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + render_content(messages[0].content, false) + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- set content = render_content(message.content, True) %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content }}{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Spelled as the Hub's Qwen3-VL: pixel bounds in size.shortest_edge/longest_edge (images
# of 4 to 64 tokens of 32 px), mean and std 0.5.
PREPROCESSOR = dict(
    size=dict(shortest_edge=32 * 32 * 4, longest_edge=32 * 32 * 64),
    patch_size=16,
    merge_size=2,
    temporal_patch_size=2,
    image_mean=[0.5, 0.5, 0.5],
    image_std=[0.5, 0.5, 0.5],
    image_processor_type="Qwen2VLImageProcessorFast",
)
# The Hub's Qwen3-VL ship a video_preprocessor_config.json of their own; here a clip may
# hold 256 tokens of 32 px (its frames times each frame's) before it is scaled down.
VIDEO_PREPROCESSOR = dict(
    {key: value for key, value in PREPROCESSOR.items() if key != "image_processor_type"},
    size=dict(shortest_edge=32 * 32 * 4, longest_edge=32 * 32 * 256),
    video_processor_type="Qwen3VLVideoProcessor",
)


def build_tiny_qwen3_vl(out_dir: Path, seed: int = 0, tie_word_embeddings: bool = False) -> Path:
    """A tiny random Qwen3VLForConditionalGeneration (tokenizer, template, processor
    config as build_tiny_qwen_vl writes them, and a video_preprocessor_config.json); tied
    embeddings as the 2B and 4B have."""
    build_tiny_qwen_vl(
        out_dir,
        transformers.Qwen3VLConfig,
        transformers.Qwen3VLForConditionalGeneration,
        TEXT,
        VISION,
        CHAT_TEMPLATE,
        PREPROCESSOR,
        seed,
        tie_word_embeddings=tie_word_embeddings,
    )
    (out_dir / "video_preprocessor_config.json").write_text(json.dumps(VIDEO_PREPROCESSOR))
    return out_dir


def load_qwen3_vl_reference(model_dir: Path):
    return transformers.Qwen3VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32
    ).eval()
