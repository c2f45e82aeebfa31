"""VLM time to first token and decode tokens/s: edgechat vs transformers
(`LlavaForConditionalGeneration.generate`, or with `--model qwen2_5_vl` / `qwen3_vl`
`Qwen2_5_VLForConditionalGeneration` / `Qwen3VLForConditionalGeneration.generate`) on the
same small random model.

Both sides start from the same OpenAI-style user message: a short text and 1 or 4 random
RGB PNGs (640x480) as base64 data URLs. Each timed call includes turning those URLs into
pixel values, because that is part of a real request's TTFT:

* edgechat: `engine.chat_request(messages)` (data-URL and PNG decode, resize, crop,
  normalise, chat template, image-token expansion), `add_sequence`, then `step()` until
  the first output that carries a token; the same request runs on to 64 tokens.
* transformers: base64 + PIL decode of the same URLs, `CLIPImageProcessorPil` (Qwen2.5-VL:
  `Qwen2VLImageProcessorPil`; same preprocessor_config.json), then
  `generate(max_new_tokens=64, min_new_tokens=64)` with a streamer that timestamps each
  token. The prompt's token ids are edgechat's (the same
  chat template; tokenizing ~40 text tokens is not timed on that side).

TTFT = start of the call -> first new token; decode tok/s = 63 / (last token - first
token), i.e. steady-state decode after prefill, from the same run. Greedy, no EOS stop.
Every repeat uses fresh images (edgechat caches image embeddings and KV prefixes by
content; prefix caching is also switched off) so no side reuses earlier work. Median of
`--repeats` after one warm-up; both sides run in this one process, interleaved.

Qwen2.5-VL resizes each 640x480 image within max_pixels 28 x 28 x 256 to 504x364: 234
tokens; Qwen3-VL within 32 x 32 x 256 to 576x416: 234 (LLaVA's 224 px crop: 256).

    .venv/bin/python benchmarks/bench_vlm.py [--model qwen2_5_vl|qwen3_vl] [--repeats 3]
        [--new-tokens 64] [--device cuda]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import platform
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import transformers
from PIL import Image
from qwen_vl_checkpoint import (
    QWEN3_PREPROCESSOR,
    QWEN3_VISION,
    QWEN_PREPROCESSOR,
    QWEN_VISION,
    build_qwen_checkpoint,
    qwen_pixel_inputs,
)
from transformers.generation.streamers import BaseStreamer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from engine import LLM, SamplingParams
from engine.demo import write_tokenizer
from engine.multimodal.images import CLIP_MEAN, CLIP_STD

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 224  # 16 x 16 patches of 14: 256 image tokens per image ("default" strategy)
IMAGE_WH = (640, 480)  # the uploaded images, before resize + centre crop

VISION = dict(
    hidden_size=384,
    intermediate_size=1536,
    num_hidden_layers=6,
    num_attention_heads=6,
    image_size=IMAGE_SIZE,
    patch_size=14,
)
TEXT = dict(
    vocab_size=32000,
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=8,
    num_attention_heads=12,
    num_key_value_heads=4,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)
PROMPT = "Describe these images in detail, then compare them."


def llava_pixel_inputs(processor, images, token_ids) -> dict:
    return dict(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])


def build_checkpoint(out_dir: Path) -> transformers.LlavaForConditionalGeneration:
    """Random LLaVA (CLIP ViT + Llama), the demo tokenizer plus ``<image>``, and a CLIP
    preprocessor_config.json. Ids past the tokenizer's vocabulary decode to ""."""
    tokenizer = write_tokenizer(out_dir)
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**VISION),
        text_config=transformers.LlamaConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **TEXT
        ),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).float().eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "preprocessor_config.json").write_text(
        json.dumps(
            dict(
                image_mean=list(CLIP_MEAN),
                image_std=list(CLIP_STD),
                size={"shortest_edge": IMAGE_SIZE},
                crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                do_center_crop=True,
                do_resize=True,
                do_rescale=True,
                do_normalize=True,
                do_convert_rgb=True,
                rescale_factor=1 / 255,
                resample=3,
            )
        )
    )
    return model


def data_url(seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (IMAGE_WH[1], IMAGE_WH[0], 3), generator=generator)
    buffer = io.BytesIO()
    Image.fromarray(pixels.to(torch.uint8).numpy(), "RGB").save(buffer, "PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def messages_for(urls: list[str]) -> list[dict]:
    """A user message with ``urls`` (data URLs; a video's a ``video_url`` part), then
    the prompt."""
    kinds = ["video_url" if url.startswith("data:video/") else "image_url" for url in urls]
    parts = [{"type": kind, kind: {"url": url}} for kind, url in zip(kinds, urls)]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": PROMPT}]}]


class Stamps(BaseStreamer):
    """Timestamps every token `generate` streams (the first `put` is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.calls = 0

    def put(self, value):
        if self.calls:
            self.times.append(time.perf_counter())
        self.calls += 1

    def end(self):
        pass


def result(start: float, stamps: list[float], new_tokens: int) -> tuple[float, float]:
    assert len(stamps) == new_tokens, (len(stamps), new_tokens)
    return stamps[0] - start, (new_tokens - 1) / (stamps[-1] - stamps[0])


def run_edgechat(llm: LLM, urls: list[str], new_tokens: int) -> tuple[float, float]:
    engine = llm.engine
    params = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    start = time.perf_counter()
    token_ids, images = engine.chat_request(messages_for(urls))
    engine.add_request("bench", token_ids, params, images)
    stamps: list[float] = []
    while engine.has_unfinished:
        for output in engine.step():
            if output.new_token_ids:
                stamps.append(time.perf_counter())
    return result(start, stamps, new_tokens)


def run_transformers(model, pixel_inputs, token_ids, urls, new_tokens, device, dtype):
    """``pixel_inputs(images, token_ids)``: generate's image arguments, from the model's
    PIL processor."""
    streamer = Stamps()
    start = time.perf_counter()
    images = [
        Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).convert("RGB")
        for url in urls
    ]
    inputs = {
        name: tensor.to(device, dtype) if tensor.is_floating_point() else tensor.to(device)
        for name, tensor in pixel_inputs(images, token_ids).items()
    }
    with torch.inference_mode():
        model.generate(
            input_ids=torch.tensor([token_ids], device=device),
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            streamer=streamer,
        )
    return result(start, streamer.times, new_tokens)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava", choices=["llava", "qwen2_5_vl", "qwen3_vl"])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    dtype = getattr(torch, args.dtype)
    seeds = iter(range(10_000))  # fresh images for every call: no cache hits on either side
    with tempfile.TemporaryDirectory() as tmp:
        if args.model in ("qwen2_5_vl", "qwen3_vl"):
            hf_model = build_qwen_checkpoint(Path(tmp), TEXT, args.model).to(args.device, dtype)
            vision = hf_model.model.visual
            preprocessor = QWEN3_PREPROCESSOR if args.model == "qwen3_vl" else QWEN_PREPROCESSOR
            processor = Qwen2VLImageProcessorPil(**preprocessor)
            pixel_inputs = partial(
                qwen_pixel_inputs, processor, image_token_id=hf_model.config.image_token_id
            )
        else:
            hf_model = build_checkpoint(Path(tmp)).to(args.device, dtype)
            vision = hf_model.model.vision_tower
            processor = transformers.CLIPImageProcessorPil.from_pretrained(tmp)
            pixel_inputs = partial(llava_pixel_inputs, processor)
        vision_params = sum(p.numel() for p in vision.parameters())
        total_params = sum(p.numel() for p in hf_model.parameters())
        llm = LLM(
            tmp,
            kv_cache_memory=1.0,
            dtype=args.dtype,
            device=args.device,
            enable_prefix_caching=False,
        )

        def both(num_images: int, new_tokens: int):
            urls = [data_url(next(seeds)) for _ in range(num_images)]
            ours = run_edgechat(llm, urls, new_tokens)
            # Same prompt ids for transformers (pixel values from its own preprocessing).
            token_ids, images = llm.engine.chat_request(messages_for(urls))
            theirs = run_transformers(
                hf_model, pixel_inputs, token_ids, urls, new_tokens, args.device, dtype
            )
            return ours, theirs, len(token_ids), images, urls

        # Warm-up, and a check that both sides see the same pixels and prompt length.
        prompt_lens = {}
        for n in args.images:
            _, _, prompt_lens[n], images, urls = both(n, 4)
            decoded = [
                Image.open(io.BytesIO(base64.b64decode(u.partition(",")[2]))).convert("RGB")
                for u in urls
            ]
            hf_pixels = processor(images=decoded, return_tensors="pt")["pixel_values"]
            # Qwen2.5-VL's patches are [1, h, w, 4, patch_dim] an image, transformers' flat.
            ours_pixels = torch.cat(
                [image.pixel_values.reshape(-1, *hf_pixels.shape[1:]) for image in images]
            )
            max_diff = (hf_pixels - ours_pixels).abs().max().item()
            assert max_diff < 0.05, f"preprocessing differs by {max_diff}"

        rows = []
        for n in args.images:
            samples = [both(n, args.new_tokens)[:2] for _ in range(args.repeats)]
            ttft = [statistics.median(s[i][0] for s in samples) for i in (0, 1)]
            decode = [statistics.median(s[i][1] for s in samples) for i in (0, 1)]
            rows.append((n, ttft, decode))

    device_name = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{cpu_name()}, {torch.get_num_threads()} threads"
    )
    if args.model == "qwen3_vl":
        tower = (
            f"ViT with DeepStack {QWEN3_VISION['deepstack_visual_indexes']}: hidden "
            f"{QWEN3_VISION['hidden_size']}, {QWEN3_VISION['depth']} layers, patch 16, 2x2 "
            "merge; Qwen3 with interleaved M-RoPE"
        )
    elif args.model == "qwen2_5_vl":
        tower = (
            f"windowed ViT: hidden {QWEN_VISION['hidden_size']}, {QWEN_VISION['depth']} "
            f"layers, patch 14, 2x2 merge; Qwen2 with M-RoPE"
        )
    else:
        tower = (
            f"CLIP ViT: hidden {VISION['hidden_size']}, {VISION['num_hidden_layers']} layers, "
            f"{IMAGE_SIZE}px / patch 14; Llama"
        )
    print(
        f"model: random {args.model}, {total_params / 1e6:.0f}M params "
        f"({vision_params / 1e6:.0f}M {tower}: hidden {TEXT['hidden_size']}, "
        f"{TEXT['num_hidden_layers']} layers, GQA {TEXT['num_attention_heads']}/"
        f"{TEXT['num_key_value_heads']}, vocab {TEXT['vocab_size']}), {args.dtype}, "
        f"{args.device}"
    )
    print(f"machine: {device_name}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    print(
        f"images: random {IMAGE_WH[0]}x{IMAGE_WH[1]} PNG data URLs, decode + preprocess timed "
        f"on both sides; prompt tokens: "
        + ", ".join(f"{n} image(s) {length}" for n, length in prompt_lens.items())
    )
    print(f"{args.new_tokens} new tokens, greedy, median of {args.repeats} after a warm-up")
    print("ratio: how many times faster edgechat is (>1x: edgechat ahead)")
    print()
    print("| workload | edgechat | transformers | ratio |")
    print("|---|---|---|---|")
    for n, ttft, _ in rows:
        label = f"{n} image{'s' if n > 1 else ''}"
        print(
            f"| TTFT, {label} (ms, lower is better) | {ttft[0] * 1e3:.0f} | "
            f"{ttft[1] * 1e3:.0f} | {ttft[1] / ttft[0]:.2f}x |"
        )
    for n, _, decode in rows:
        label = f"{n} image{'s' if n > 1 else ''}"
        print(
            f"| decode tok/s after {label} | {decode[0]:.1f} | {decode[1]:.1f} | "
            f"{decode[0] / decode[1]:.2f}x |"
        )


if __name__ == "__main__":
    main()
