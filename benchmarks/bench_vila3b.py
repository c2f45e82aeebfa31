"""VILA1.5-3B-shaped time to first token with one image, and decode tokens/s: the
language model in AutoAWQ int4 (group 128) against the same model in fp16, one run.

The model is random, in VILA's own layout: SigLIP-so400m-384 vision tower (fp16),
mlp_downsample projector (729 patches -> 196 image tokens), and a Sheared-LLaMA-2.7B-shaped
language model in llm/. The request is what a client sends: a 640x480 PNG as a base64
data URL and a short question; TTFT covers decoding and preprocessing the image, the
vision tower, the prefill and the first token (see bench_vlm.py's ``run_edgechat``).
Every call gets a fresh image and prefix caching is off, so nothing is reused. Median of
``--repeats`` after a warm-up. Issue goal: TTFT < 100 ms on an H100 in int4.

    .venv/bin/python benchmarks/bench_vila3b.py [--repeats 5] [--new-tokens 128]

On a machine without CUDA it runs a tiny model of the same layout in fp32 instead
(``--tiny`` forces that): a check that the benchmark works, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
import transformers
from bench_vlm import data_url, run_edgechat
from random_checkpoints import random_dense, write_llama_checkpoint
from safetensors.torch import save_file

from engine import LLM

# Sheared-LLaMA-2.7B, VILA1.5-3B's language model.
SHEARED_LLAMA_2_7B = dict(
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    vocab_size=32000,
    hidden_size=2560,
    intermediate_size=6912,
    num_hidden_layers=32,
    num_attention_heads=20,
    num_key_value_heads=20,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    hidden_act="silu",
    tie_word_embeddings=False,
)
SIGLIP_SO400M_384 = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=384,
    patch_size=14,
)
TINY_LLM = dict(
    SHEARED_LLAMA_2_7B,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
)
TINY_SIGLIP = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=70,
    patch_size=14,
)
IMAGE_TOKEN = "<image>"


def write_vila_checkpoint(out_dir: Path, llm: dict, siglip: dict, group_size: int | None):
    write_llama_checkpoint(out_dir / "llm", llm, group_size)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out_dir / "llm")
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    tokenizer.save_pretrained(out_dir / "llm", save_jinja_files=False)
    vision_config = transformers.SiglipVisionConfig(**siglip)
    transformers.SiglipVisionModel(vision_config).half().save_pretrained(out_dir / "vision_tower")
    (out_dir / "vision_tower" / "preprocessor_config.json").write_text(
        json.dumps(
            dict(
                image_processor_type="SiglipImageProcessor",
                do_resize=True,
                size={"height": siglip["image_size"], "width": siglip["image_size"]},
                resample=3,
                image_mean=[0.5] * 3,
                image_std=[0.5] * 3,
            )
        )
    )
    c, hidden = siglip["hidden_size"], llm["hidden_size"]
    projector = {
        "layers.1.weight": torch.ones(4 * c, dtype=torch.float16),
        "layers.1.bias": torch.zeros(4 * c, dtype=torch.float16),
        "layers.2.weight": random_dense(hidden, 4 * c),
        "layers.2.bias": torch.zeros(hidden, dtype=torch.float16),
        "layers.4.weight": random_dense(hidden, hidden),
        "layers.4.bias": torch.zeros(hidden, dtype=torch.float16),
    }
    (out_dir / "mm_projector").mkdir()
    save_file(projector, out_dir / "mm_projector" / "model.safetensors")
    (out_dir / "mm_projector" / "config.json").write_text(
        json.dumps({"model_type": "v2l_projector", "mm_projector_type": "mlp_downsample"})
    )
    (out_dir / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlavaLlamaModel"],
                "model_type": "llava_llama",
                "mm_projector_type": "mlp_downsample",
                "mm_vision_select_layer": -2,
                "mm_vision_select_feature": "cls_patch",
                "image_aspect_ratio": "resize",
                "mm_hidden_size": c,
                "hidden_size": hidden,
            }
        )
    )


def measure(model_dir: Path, device: str, dtype: str, repeats: int, new_tokens: int, seeds):
    llm = LLM(
        str(model_dir),
        dtype=dtype,
        device=device,
        max_num_seqs=1,
        max_model_len=2048,
        enable_prefix_caching=False,
    )
    run_edgechat(llm, [data_url(next(seeds))], 4)  # warm-up (and kernel compilation)
    samples = [run_edgechat(llm, [data_url(next(seeds))], new_tokens) for _ in range(repeats)]
    image_tokens = llm.engine.vision.num_image_tokens
    del llm
    if device == "cuda":
        torch.cuda.empty_cache()
    ttft = statistics.median(s[0] for s in samples)
    decode = statistics.median(s[1] for s in samples)
    return ttft, decode, image_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--group-size", type=int, default=128, choices=[32, 64, 128])
    parser.add_argument("--tiny", action="store_true", help="the tiny CPU check shape")
    args = parser.parse_args()
    tiny = args.tiny or not torch.cuda.is_available()
    device, dtype = ("cpu", "float32") if tiny else ("cuda", "float16")
    llm_shape, siglip = (TINY_LLM, TINY_SIGLIP) if tiny else (SHEARED_LLAMA_2_7B, SIGLIP_SO400M_384)
    torch.manual_seed(0)
    seeds = iter(range(10_000))
    rows = []
    for name, group_size in ((f"int4 g{args.group_size}", args.group_size), ("fp16", None)):
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "vila"
            write_vila_checkpoint(model_dir, llm_shape, siglip, group_size)
            ttft, decode, image_tokens = measure(
                model_dir, device, dtype, args.repeats, args.new_tokens, seeds
            )
        rows.append((name, ttft, decode))
    machine = torch.cuda.get_device_name() if device == "cuda" else "CPU (tiny shape: a check)"
    print(
        f"model: random VILA1.5-3B shape{' (TINY)' if tiny else ''}: SigLIP hidden "
        f"{siglip['hidden_size']} x {siglip['num_hidden_layers']} layers at "
        f"{siglip['image_size']} px, mlp_downsample -> {image_tokens} image tokens; Llama "
        f"hidden {llm_shape['hidden_size']} x {llm_shape['num_hidden_layers']} layers; "
        f"{dtype} activations on {machine}"
    )
    print(f"one 640x480 PNG data URL + a question; {args.new_tokens} new tokens, greedy;")
    print(f"median of {args.repeats} after a warm-up; torch {torch.__version__}")
    print()
    print("| language model | TTFT, 1 image (ms) | decode tok/s |")
    print("|---|---|---|")
    for name, ttft, decode in rows:
        print(f"| {name} | {ttft * 1e3:.1f} | {decode:.1f} |")
    (_, ttft4, decode4), (_, ttft16, decode16) = rows
    print(f"| int4 / fp16 | {ttft16 / ttft4:.2f}x faster | {decode4 / decode16:.2f}x |")


if __name__ == "__main__":
    main()
