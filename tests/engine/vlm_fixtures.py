"""Tiny random LLaVA checkpoints and image helpers shared by the VLM tests."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file

from engine.demo import write_tokenizer
from engine.multimodal.images import CLIP_MEAN, CLIP_STD
from tests.conftest import TINY

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 56  # 4 x 4 patches of 14: 16 image tokens under the "default" strategy


def build_tiny_llava(out_dir: Path, seed: int = 0, **overrides) -> Path:
    """A tiny random LlavaForConditionalGeneration with the demo tokenizer plus ``<image>``
    and a CLIP preprocessor_config.json; ``overrides`` go to LlavaConfig."""
    tokenizer = write_tokenizer(out_dir)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    vision = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=14,
    )
    text = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TINY,
    )
    config = transformers.LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **overrides,
    )
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config).to(torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0, 0.15)
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(
            dict(
                image_mean=list(CLIP_MEAN),
                image_std=list(CLIP_STD),
                size={"shortest_edge": IMAGE_SIZE},
                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                do_center_crop=True,
                resample=3,
            )
        )
    )
    return out_dir


def load_llava_reference(model_dir: Path):
    return transformers.LlavaForConditionalGeneration.from_pretrained(
        model_dir, dtype=torch.float32
    ).eval()


def random_image(seed: int, size: tuple[int, int] = (80, 64), mode: str = "RGB") -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = torch.randint(0, 256, (size[1], size[0], channels), generator=generator)
    return Image.fromarray(pixels.to(torch.uint8).squeeze(-1).numpy(), mode)


def data_url(image: Image.Image, fmt: str = "PNG", **save_args) -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    media = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp", "GIF": "gif"}[fmt]
    return f"data:image/{media};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def save_renamed(source: Path, out: Path, renames: list[tuple[str, str]]) -> None:
    """The safetensors file ``source`` saved as ``out`` with each tensor name's first
    matching ``(old prefix, new prefix)`` replaced."""
    tensors = {}
    for name, tensor in load_file(source).items():
        for old, new in renames:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        tensors[name] = tensor
    save_file(tensors, out, metadata={"format": "pt"})


def write_vila_parts(out_dir: Path, llm: torch.nn.Module, vision_tower: torch.nn.Module) -> None:
    """``llm/`` and ``vision_tower/`` of a VILA-layout checkpoint (VILA1.5, NVILA), their
    matrices redrawn at a scale that gives the tiny models lively logits, and the tower's
    SigLIP preprocessor_config.json."""
    for model, part in ((llm, "llm"), (vision_tower, "vision_tower")):
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1:
                    param.normal_(0, 0.15)
        model.save_pretrained(out_dir / part, safe_serialization=True)
    size = vision_tower.config.image_size
    (out_dir / "vision_tower" / "preprocessor_config.json").write_text(
        json.dumps(
            dict(
                image_processor_type="SiglipImageProcessor",
                do_resize=True,
                size={"height": size, "width": size},
                resample=3,
                image_mean=[0.5] * 3,
                image_std=[0.5] * 3,
            )
        )
    )


def write_vila_projector(out_dir: Path, kind: str, shapes: dict[str, tuple[int, ...]]) -> None:
    """``mm_projector/`` of a VILA-layout checkpoint: random weights and biases of
    ``shapes`` (norm weights, the 1-D ones, around 1) and its ``mm_projector_type``."""
    tensors = {}
    for name, shape in shapes.items():
        tensors[f"{name}.weight"] = torch.randn(shape) * 0.15 + (len(shape) == 1)
        tensors[f"{name}.bias"] = torch.randn(shape[0]) * 0.1
    (out_dir / "mm_projector").mkdir()
    save_file(tensors, out_dir / "mm_projector" / "model.safetensors", metadata={"format": "pt"})
    (out_dir / "mm_projector" / "config.json").write_text(
        json.dumps({"model_type": "v2l_projector", "mm_projector_type": kind})
    )
