"""Tiny random Qwen2.5-VL checkpoints shared by the Qwen2.5-VL tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

from engine.demo import write_tokenizer
from engine.multimodal.images import CLIP_MEAN, CLIP_STD
from tests.conftest import TINY

# 14 px patches merged 2 x 2 (28 px tokens); windows of 2 x 2 tokens, so small images
# still have several, with ragged edges; layers 1 and 3 attend over the whole image.
VISION = dict(
    depth=4,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=56,
    fullatt_block_indexes=[1, 3],
    out_hidden_size=64,
)

# The chat template of Qwen/Qwen2.5-VL-*-Instruct (chat_template.json), as published.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# Images of 4 to 64 tokens (28 px each): 97x233 and 200x150 are both resized.
PREPROCESSOR = dict(
    min_pixels=28 * 28 * 4,
    max_pixels=28 * 28 * 64,
    patch_size=14,
    merge_size=2,
    temporal_patch_size=2,
    image_mean=list(CLIP_MEAN),
    image_std=list(CLIP_STD),
    image_processor_type="Qwen2VLImageProcessor",
)


def build_tiny_qwen2_5_vl(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2_5_VLForConditionalGeneration with the demo tokenizer plus the
    vision tokens, Qwen2.5-VL's chat template and a preprocessor_config.json."""
    # head_dim 16: 8 frequencies, 2 turned by time, 3 by height, 3 by width
    rope = dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3])
    return build_tiny_qwen_vl(
        out_dir,
        transformers.Qwen2_5_VLConfig,
        transformers.Qwen2_5_VLForConditionalGeneration,
        dict(TINY, rope_parameters=rope),
        VISION,
        CHAT_TEMPLATE,
        PREPROCESSOR,
        seed,
    )


def build_tiny_qwen_vl(
    out_dir: Path,
    config_class,
    model_class,
    text: dict,
    vision: dict,
    chat_template: str,
    preprocessor: dict,
    seed: int,
    **config_fields,
) -> Path:
    """A tiny random Qwen-VL ``model_class`` (``config_fields`` added to its config): the
    demo tokenizer plus the vision tokens,
    ``chat_template``, a preprocessor_config.json; weights and biases of std 0.15 (peaked
    logits, a sharp comparison), norm weights in [0.5, 1.5]."""
    tokenizer = write_tokenizer(out_dir)
    tokenizer.add_tokens(VISION_TOKENS, special_tokens=True)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    ids = dict(zip(VISION_TOKENS, tokenizer.convert_tokens_to_ids(VISION_TOKENS)))
    text = dict(
        text,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **config_fields,
    )
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1 or name.endswith("bias"):
                param.normal_(0, 0.15)
            else:  # norm weights away from 1, so a norm used wrongly shows
                param.uniform_(0.5, 1.5)
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return out_dir


def load_qwen2_5_vl_reference(model_dir: Path):
    return transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32
    ).eval()
