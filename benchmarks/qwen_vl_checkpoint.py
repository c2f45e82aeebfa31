"""Random Qwen2.5-VL and Qwen3-VL checkpoints for bench_vlm.py: a small windowed ViT and
a Qwen2 language model with M-RoPE (Qwen2.5-VL), or Qwen3-VL's ViT (learned positions,
DeepStack from three layers) and a Qwen3 with interleaved M-RoPE; the demo tokenizer plus
the vision tokens, Qwen2.5-VL's chat template and a preprocessor_config.json bounding
images to 256 tokens."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers

from engine.demo import write_tokenizer
from engine.multimodal.images import CLIP_MEAN, CLIP_STD

QWEN_VISION = dict(
    depth=6,
    hidden_size=384,
    num_heads=6,
    intermediate_size=1536,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[2, 5],
)
# Qwen3-VL-2B's tower, shallower: 16 px patches, a 48 x 48 grid of learned positions.
QWEN3_VISION = dict(
    depth=6,
    hidden_size=384,
    num_heads=6,
    intermediate_size=1536,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=2304,
    deepstack_visual_indexes=[1, 3, 5],
)
QWEN_VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_PREPROCESSOR = dict(
    min_pixels=56 * 56,
    max_pixels=28 * 28 * 256,
    patch_size=14,
    merge_size=2,
    temporal_patch_size=2,
    image_mean=list(CLIP_MEAN),
    image_std=list(CLIP_STD),
)
# Qwen3-VL spells the bounds as size.shortest_edge/longest_edge; tokens of 32 px.
QWEN3_PREPROCESSOR = dict(
    size=dict(shortest_edge=64 * 64, longest_edge=32 * 32 * 256),
    patch_size=16,
    merge_size=2,
    temporal_patch_size=2,
    image_mean=[0.5, 0.5, 0.5],
    image_std=[0.5, 0.5, 0.5],
)
# Qwen/Qwen2.5-VL-*-Instruct's chat template, less its video and picture-numbering branches.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_checkpoint(out_dir: Path, text_shape: dict, family: str = "qwen2_5_vl"):
    """Random Qwen2.5-VL (its windowed ViT + a Qwen2 with M-RoPE of ``text_shape``, a
    Qwen2Config's sizes) or, ``family`` "qwen3_vl", Qwen3-VL; the demo tokenizer plus the
    vision tokens, and a preprocessor_config.json."""
    qwen3 = family == "qwen3_vl"
    tokenizer = write_tokenizer(out_dir)
    tokenizer.add_tokens(QWEN_VISION_TOKENS, special_tokens=True)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    ids = dict(zip(QWEN_VISION_TOKENS, tokenizer.convert_tokens_to_ids(QWEN_VISION_TOKENS)))
    head_dim = text_shape["hidden_size"] // text_shape["num_attention_heads"]
    # Qwen2.5-VL's split (16, 24, 24 of 64 frequencies) scaled to this head; Qwen3-VL's
    # (24, 20, 20), interleaved.
    section = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    rope = dict(rope_type="default", rope_theta=1e6, mrope_section=section)
    if qwen3:
        section = [head_dim // 2 - 2 * (5 * head_dim // 32), 5 * head_dim // 32, 5 * head_dim // 32]
        rope = dict(rope, rope_theta=5e6, mrope_section=section, mrope_interleaved=True)
    text = dict(
        text_shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rope_parameters=rope,
        **(dict(head_dim=head_dim) if qwen3 else {}),
    )
    config_class = transformers.Qwen3VLConfig if qwen3 else transformers.Qwen2_5_VLConfig
    vision = QWEN3_VISION if qwen3 else QWEN_VISION
    config = config_class(
        text_config=text,
        vision_config=dict(vision, out_hidden_size=text_shape["hidden_size"]),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    model_class = (
        transformers.Qwen3VLForConditionalGeneration
        if qwen3
        else transformers.Qwen2_5_VLForConditionalGeneration
    )
    model = model_class(config).float().eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    preprocessor = QWEN3_PREPROCESSOR if qwen3 else QWEN_PREPROCESSOR
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model


def qwen_pixel_inputs(processor, images, token_ids, image_token_id) -> dict:
    """What Qwen2.5-VL's generate takes besides input_ids, from its PIL processor."""
    out = processor(images=images, return_tensors="pt")
    input_ids = torch.tensor([token_ids])
    return dict(
        pixel_values=out["pixel_values"],
        image_grid_thw=out["image_grid_thw"],
        mm_token_type_ids=(input_ids == image_token_id).int(),
    )
