"""NVILA-Lite-2B-shaped time to first token with one tiled image, and decode tokens/s:
edgechat against a transformers-based reference, on the same random checkpoint.

The checkpoint is random, in NVILA's released layout: llm/ of Qwen2.5-1.5B's shape
(NVILA-Lite-2B's language model), vision_tower/ SigLIP-so400m at 448 px, mm_projector/
``mlp_downsample_3x3_fix`` (1024 patches -> 121 tokens a tile), stored fp16, run fp32.

The request is what a client sends: one random PNG as a base64 data URL and a question.
NVILA-Lite tiles it (``--image-size``, 896x448 by default: 2 tiles and a thumbnail).

* edgechat: ``chat_request`` (decode, tiling, normalise, template), ``add_request``, then
  ``step()`` until the first token; the same request runs on to ``--new-tokens``.
* reference: PIL decode, the same tiling, transformers' ``SiglipImageProcessorPil``,
  ``SiglipVisionModel`` (hidden_states[-2]), the projector as torch ops, then
  ``Qwen2ForCausalLM.generate(inputs_embeds=...)`` over edgechat's prompt ids (the image
  tokens' embeddings replaced), with a streamer timestamping each token.

TTFT = start -> first new token; decode tok/s = (new tokens - 1) / (last - first token).
Prefix caching is off and every call gets a fresh image. The two sides run one after
the other (each holds ~8 GB of fp32 weights), median of ``--repeats`` after a warm-up.

    .venv/bin/python benchmarks/bench_nvila.py [--repeats 2] [--new-tokens 16] [--tiny]

``--tiny`` keeps the widths but 2 layers a model: a check that the benchmark works, not
a measurement.
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from bench_vlm import Stamps, cpu_name, messages_for, result, run_edgechat
from PIL import Image
from safetensors.torch import load_file, save_file

from engine import LLM
from engine.demo import write_tokenizer
from engine.multimodal.nvila_images import closest_grid, cut_tiles

# Qwen2.5-1.5B, NVILA-Lite-2B's language model.
QWEN2_5_1_5B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
CHECK = " (2 layers a model: a check, not a measurement)"
SIGLIP_SO400M_448 = dict(
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    image_size=448,
    patch_size=14,
)


def write_checkpoint(out_dir: Path, tiny: bool) -> None:
    torch.manual_seed(0)
    write_tokenizer(out_dir / "llm")  # ids past its vocabulary decode to "": fine for timing
    depth = {"num_hidden_layers": 2} if tiny else {}
    text = transformers.Qwen2Config(**{**QWEN2_5_1_5B, **depth})
    vision = transformers.SiglipVisionConfig(**{**SIGLIP_SO400M_448, **depth})
    for model_cls, config, part in (
        (transformers.Qwen2ForCausalLM, text, "llm"),
        (transformers.SiglipVisionModel, vision, "vision_tower"),
    ):
        with torch.device("meta"):
            model = model_cls(config)
        model = model.to_empty(device="cpu").half()
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() > 1:
                    param.normal_(0, 0.02)
                else:
                    param.fill_(1.0)
        model.tie_weights()  # to_empty gave the tied LM head storage of its own
        model.save_pretrained(out_dir / part, safe_serialization=True)
        del model
    (out_dir / "vision_tower" / "preprocessor_config.json").write_text(
        json.dumps(
            dict(
                image_processor_type="SiglipImageProcessor",
                do_resize=True,
                size={"height": 448, "width": 448},
                resample=3,
                image_mean=[0.5] * 3,
                image_std=[0.5] * 3,
            )
        )
    )
    c, hidden = vision.hidden_size, text.hidden_size
    projector = {}
    for name, shape in {
        "layers.1": (9 * c,),
        "layers.2": (3 * c, 9 * c),
        "layers.4": (3 * c,),
        "layers.5": (hidden, 3 * c),
        "layers.7": (hidden, hidden),
    }.items():
        projector[f"{name}.weight"] = (torch.randn(shape) * 0.02 + (len(shape) == 1)).half()
        projector[f"{name}.bias"] = torch.zeros(shape[0], dtype=torch.float16)
    (out_dir / "mm_projector").mkdir()
    save_file(projector, out_dir / "mm_projector" / "model.safetensors")
    kind = "mlp_downsample_3x3_fix"
    (out_dir / "mm_projector" / "config.json").write_text(
        json.dumps({"model_type": "v2l_projector", "mm_projector_type": kind})
    )
    config = {
        "architectures": ["LlavaLlamaModel"],
        "model_type": "llava_llama",
        "chat_template": "qwen2",
        "mm_projector_type": kind,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "cls_patch",
        "image_aspect_ratio": "dynamic",
        "mm_hidden_size": c,
        "hidden_size": hidden,
        "s2": False,
    }
    (out_dir / "config.json").write_text(json.dumps(config))


def data_url(seed: int, size: tuple[int, int]) -> str:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator)
    buffer = io.BytesIO()
    Image.fromarray(pixels.to(torch.uint8).numpy(), "RGB").save(buffer, "PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


class Reference:
    """NVILA-Lite's forward pass from transformers' parts (fp32)."""

    def __init__(self, model_dir: Path):
        self.vision = transformers.SiglipVisionModel.from_pretrained(
            model_dir / "vision_tower", dtype=torch.float32
        ).eval()
        self.llm = transformers.Qwen2ForCausalLM.from_pretrained(
            model_dir / "llm", dtype=torch.float32
        ).eval()
        self.processor = transformers.SiglipImageProcessorPil.from_pretrained(
            model_dir / "vision_tower"
        )
        projector = load_file(model_dir / "mm_projector" / "model.safetensors")
        self.p = {name: tensor.float() for name, tensor in projector.items()}

    def tiles(self, url: str) -> list[Image.Image]:
        image = Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).convert("RGB")
        cols, rows = closest_grid(*image.size, 1, 12, 448)
        tiles = cut_tiles(image, cols, rows, 448)
        return tiles + [image.resize((448, 448))] if len(tiles) > 1 else tiles

    def project(self, x: torch.Tensor) -> torch.Tensor:
        n, num_tokens, c = x.shape
        side = math.isqrt(num_tokens)
        pad = -side % 3
        x = F.pad(x.reshape(n, side, side, c), (0, 0, 0, pad, 0, pad))
        m = (side + pad) // 3
        x = x.reshape(n, m, 3, m, 3, c).permute(0, 1, 3, 2, 4, 5).reshape(n, m * m, 9 * c)
        p = self.p
        x = F.layer_norm(x, x.shape[-1:], p["layers.1.weight"], p["layers.1.bias"], eps=1e-5)
        x = F.gelu(F.linear(x, p["layers.2.weight"], p["layers.2.bias"]))
        x = F.layer_norm(x, x.shape[-1:], p["layers.4.weight"], p["layers.4.bias"], eps=1e-5)
        x = F.gelu(F.linear(x, p["layers.5.weight"], p["layers.5.bias"]))
        return F.linear(x, p["layers.7.weight"], p["layers.7.bias"])

    @torch.inference_mode()
    def run(self, url: str, token_ids: list[int], image_token_id: int, new_tokens: int):
        streamer = Stamps()
        start = time.perf_counter()
        pixels = self.processor(self.tiles(url), return_tensors="pt").pixel_values
        features = self.vision(pixels, output_hidden_states=True).hidden_states[-2]
        ids = torch.tensor(token_ids)
        embeds = self.llm.get_input_embeddings()(ids)
        embeds[ids == image_token_id] = self.project(features).flatten(0, 1)
        self.llm.generate(
            inputs_embeds=embeds[None],
            attention_mask=torch.ones(1, len(token_ids), dtype=torch.long),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            streamer=streamer,
        )
        return result(start, streamer.times, new_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--image-size", type=int, nargs=2, default=[896, 448])
    parser.add_argument("--tiny", action="store_true", help="2 layers a model: a check")
    args = parser.parse_args()
    size = tuple(args.image_size)
    seeds = iter(range(10_000))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        write_checkpoint(model_dir, args.tiny)
        llm = LLM(
            tmp,
            dtype="float32",
            device="cpu",
            kv_cache_memory=0.5,
            max_num_seqs=1,
            max_model_len=4096,
            enable_prefix_caching=False,
        )
        warm_url = data_url(next(seeds), (448, 448))
        run_edgechat(llm, [warm_url], 2)
        urls = [data_url(next(seeds), size) for _ in range(args.repeats)]
        ours = [run_edgechat(llm, [url], args.new_tokens) for url in urls]
        # The reference takes edgechat's prompt ids (same template, tiles and newlines).
        prompts = [llm.engine.chat_request(messages_for([url]))[0] for url in [warm_url, *urls]]
        num_tiles = len(llm.engine.chat_request(messages_for(urls[:1]))[1])
        image_token_id = llm.engine.vision.image_token_id
        del llm
        gc.collect()
        reference = Reference(model_dir)
        reference.run(warm_url, prompts[0], image_token_id, 2)
        theirs = [
            reference.run(url, ids, image_token_id, args.new_tokens)
            for url, ids in zip(urls, prompts[1:])
        ]
    print(
        f"model: random NVILA-Lite-2B shape{CHECK if args.tiny else ''}: SigLIP-so400m "
        f"at 448 ({num_tiles} tiles of a "
        f"{size[0]}x{size[1]} PNG, 121 tokens each), Qwen2.5-1.5B-shaped llm; fp32 on CPU "
        f"({cpu_name()}, {torch.get_num_threads()} threads); torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    print(
        f"prompt {len(prompts[1])} tokens, {args.new_tokens} new, greedy; median of "
        f"{args.repeats} after a warm-up"
    )
    print()
    print("| | TTFT, 1 tiled image (s) | decode tok/s |")
    print("|---|---|---|")
    for name, samples in (("edgechat", ours), ("transformers reference", theirs)):
        ttft = statistics.median(s[0] for s in samples)
        decode = statistics.median(s[1] for s in samples)
        print(f"| {name} | {ttft:.2f} | {decode:.2f} |")


if __name__ == "__main__":
    main()
