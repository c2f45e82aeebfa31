"""NVILA-Lite-2B-shaped time to first token with one tiled image or an 8-frame video, and
decode tokens/s: edgechat against a transformers-based reference, on the same random
checkpoint.

The checkpoint is random, in NVILA's released layout: llm/ of Qwen2.5-1.5B's shape
(NVILA-Lite-2B's language model), vision_tower/ SigLIP-so400m at 448 px, mm_projector/
``mlp_downsample_3x3_fix`` (1024 patches -> 121 tokens a tile), stored fp16, run fp32,
``num_video_frames`` 8.

The request is what a client sends, a base64 data URL and a question. Row ``image``: one
random PNG, which NVILA-Lite tiles (``--image-size``, 896x448 by default: 2 tiles and a
thumbnail). Row ``video``: an H.264 mp4 of a pan over noise (``--video-seconds`` at 30
fps, ``--video-size``), of which NVILA takes 8 frames sampled uniformly, each one tile.

* edgechat: ``chat_request`` (decode, tiling, normalise, template), ``add_request``, then
  ``step()`` until the first token; the same request runs on to ``--new-tokens``.
* reference: PIL decode, the same tiling, transformers' ``SiglipImageProcessorPil``,
  ``SiglipVisionModel`` (hidden_states[-2]), the projector as torch ops, then
  ``Qwen2ForCausalLM.generate(inputs_embeds=...)`` over edgechat's prompt ids (the image
  tokens' embeddings replaced), with a streamer timestamping each token. A video: PyAV
  decodes every frame up to the last sampled (as transformers' ``read_video_pyav``) at
  VILA's indices (the frame count from the container), each frame one tile through the
  same processor. Each row's first request is checked to give both sides the same pixels.

TTFT = start -> first new token; decode tok/s = (new tokens - 1) / (last - first token).
Prefix caching is off and every call gets a fresh image or video. The two sides run one
after the other (each holds ~8 GB of fp32 weights), median of ``--repeats`` after a warm-up
(a 448x448 image, 2 tokens) that serves both rows.

    .venv/bin/python benchmarks/bench_nvila.py [--rows image video] [--repeats 2]
        [--new-tokens 16] [--tiny]

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

import av
import torch
import torch.nn.functional as F
import transformers
from bench_video import make_clip
from bench_vlm import Stamps, cpu_name, messages_for, result, run_edgechat
from PIL import Image
from safetensors.torch import load_file, save_file

from engine import LLM
from engine.demo import write_tokenizer
from engine.multimodal.nvila_images import closest_grid, cut_tiles
from engine.multimodal.video_frames import uniform_indices

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
NUM_VIDEO_FRAMES = 8  # NVILA-Lite-2B's config
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
        "num_video_frames": NUM_VIDEO_FRAMES,
    }
    (out_dir / "config.json").write_text(json.dumps(config))


def data_url(seed: int, size: tuple[int, int]) -> str:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator)
    buffer = io.BytesIO()
    Image.fromarray(pixels.to(torch.uint8).numpy(), "RGB").save(buffer, "PNG")
    return f"data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"


def video_url(seed: int, seconds: int, size: tuple[int, int]) -> str:
    data = make_clip(seconds, *size, seed=seed)
    return f"data:video/mp4;base64,{base64.b64encode(data).decode()}"


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
        self.num_video_frames = json.loads((model_dir / "config.json").read_text())[
            "num_video_frames"
        ]

    def pictures(self, url: str) -> list[Image.Image]:
        """What SigLIP sees: an image's tiles, or a video's sampled frames."""
        return self.frames(url) if url.startswith("data:video/") else self.tiles(url)

    def frames(self, url: str) -> list[Image.Image]:
        data = base64.b64decode(url.partition(",")[2])
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            indices = uniform_indices(stream.frames, self.num_video_frames)
            wanted, frames = set(indices), {}
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames[i] = frame.to_image()
                if i == indices[-1]:
                    break
        return [frames[i] for i in indices]

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

    def pixels(self, url: str) -> torch.Tensor:
        return self.processor(self.pictures(url), return_tensors="pt").pixel_values

    @torch.inference_mode()
    def run(self, url: str, token_ids: list[int], image_token_id: int, new_tokens: int):
        streamer = Stamps()
        start = time.perf_counter()
        pixels = self.pixels(url)
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
    parser.add_argument("--rows", nargs="+", choices=["image", "video"], default=["image", "video"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--image-size", type=int, nargs=2, default=[896, 448])
    parser.add_argument("--video-seconds", type=int, default=3)
    parser.add_argument("--video-size", type=int, nargs=2, default=[448, 336])
    parser.add_argument("--tiny", action="store_true", help="2 layers a model: a check")
    args = parser.parse_args()
    size, video_size = tuple(args.image_size), tuple(args.video_size)
    seeds = iter(range(10_000))
    make_url = {
        "image": lambda: data_url(next(seeds), size),
        "video": lambda: video_url(next(seeds), args.video_seconds, video_size),
    }
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
        urls = {row: [make_url[row]() for _ in range(args.repeats)] for row in args.rows}
        ours = {
            row: [run_edgechat(llm, [url], args.new_tokens) for url in row_urls]
            for row, row_urls in urls.items()
        }
        # The reference takes edgechat's prompt ids (same template, tiles and newlines).
        requests = {
            row: [llm.engine.chat_request(messages_for([url])) for url in row_urls]
            for row, row_urls in urls.items()
        }
        warm_prompt = llm.engine.chat_request(messages_for([warm_url]))[0]
        image_token_id = llm.engine.vision.image_token_id
        del llm
        gc.collect()
        reference = Reference(model_dir)
        for row, row_urls in urls.items():  # the two sides see the same tiles or frames
            inputs = requests[row][0][1]
            ours_pixels = torch.stack([picture.pixel_values for picture in inputs])
            torch.testing.assert_close(ours_pixels, reference.pixels(row_urls[0]))
        reference.run(warm_url, warm_prompt, image_token_id, 2)
        theirs = {
            row: [
                reference.run(url, ids, image_token_id, args.new_tokens)
                for url, (ids, _) in zip(row_urls, requests[row])
            ]
            for row, row_urls in urls.items()
        }
    what = {
        "image": f"the {size[0]}x{size[1]} PNG",
        "video": f"the {args.video_seconds} s {video_size[0]}x{video_size[1]} mp4",
    }
    print(
        f"model: random NVILA-Lite-2B shape{CHECK if args.tiny else ''}: SigLIP-so400m "
        f"at 448 (121 tokens a tile), Qwen2.5-1.5B-shaped llm; fp32 on CPU "
        f"({cpu_name()}, {torch.get_num_threads()} threads); torch {torch.__version__}, "
        f"transformers {transformers.__version__}"
    )
    for row in args.rows:
        token_ids, inputs = requests[row][0]
        print()
        print(
            f"{row}: {len(inputs)} tiles (or frames) of {what[row]}, prompt "
            f"{len(token_ids)} tokens, {args.new_tokens} new, greedy; median of "
            f"{args.repeats} after a warm-up"
        )
        print()
        label = "1 tiled image" if row == "image" else f"{len(inputs)}-frame video"
        print(f"| | TTFT, {label} (s) | decode tok/s |")
        print("|---|---|---|")
        for name, samples in (("edgechat", ours[row]), ("transformers reference", theirs[row])):
            ttft = statistics.median(s[0] for s in samples)
            decode = statistics.median(s[1] for s in samples)
            print(f"| {name} | {ttft:.2f} | {decode:.2f} |")


if __name__ == "__main__":
    main()
