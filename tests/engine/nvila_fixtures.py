"""Tiny random NVILA / NVILA-Lite checkpoints in NVILA's released layout, and a reference
forward pass assembled from transformers' SiglipVisionModel and Qwen2ForCausalLM with
NVILA's tiling, S2 merge and projectors written out (NVlabs/VILA llava/mm_utils.py,
llava/model/llava_arch.py, multimodal_projector/base_projector.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from safetensors.torch import load_file

from engine.demo import write_tokenizer
from tests.conftest import TINY
from tests.engine.vlm_fixtures import write_vila_parts, write_vila_projector

TILE = 56  # 4 x 4 patches of 14: the 3x3 merge pads the grid to 6 x 6
VISION_SIZE = 24
SCALES = (TILE, 2 * TILE, 3 * TILE)
SYSTEM = "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"


def build_tiny_nvila(out_dir: Path, lite: bool, output_scale: int | None = -1) -> Path:
    """NVILA-Lite (``dynamic``, ``mlp_downsample_3x3_fix``) or NVILA (``dynamic_s2``,
    ``mlp_downsample`` over 3 scales' channels) with a Qwen2 llm/ whose tokenizer lacks
    the media tokens, a SigLIP vision_tower/ and mm_projector/, as the Hub's NVILA-* are
    laid out; keys at VILA's defaults (min/max tiles) left out. ``output_scale``: NVILA's
    ``s2_resize_output_to_scale_idx`` (None: left out, VILA's default 0)."""
    torch.manual_seed(1 if lite else 2)
    tokenizer = write_tokenizer(out_dir / "llm")
    tokenizer.save_pretrained(out_dir / "llm", save_jinja_files=False)
    text = transformers.Qwen2Config(
        vocab_size=len(tokenizer) + 8,  # room for the media tokens, as Qwen2's padded vocab
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TINY,
    )
    vision = transformers.SiglipVisionConfig(
        hidden_size=VISION_SIZE,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=TILE,
        patch_size=14,
    )
    llm = transformers.Qwen2ForCausalLM(text)
    write_vila_parts(out_dir, llm, transformers.SiglipVisionModel(vision))
    hidden = text.hidden_size
    c = VISION_SIZE if lite else VISION_SIZE * len(SCALES)
    if lite:
        kind = "mlp_downsample_3x3_fix"
        shapes = {
            "layers.1": (9 * c,),
            "layers.2": (3 * c, 9 * c),
            "layers.4": (3 * c,),
            "layers.5": (hidden, 3 * c),
            "layers.7": (hidden, hidden),
        }
    else:
        kind = "mlp_downsample"
        shapes = {"layers.1": (4 * c,), "layers.2": (hidden, 4 * c), "layers.4": (hidden, hidden)}
    write_vila_projector(out_dir, kind, shapes)
    config = {
        "architectures": ["LlavaLlamaModel"],
        "model_type": "llava_llama",
        "chat_template": "qwen2",
        "mm_projector_type": kind,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "cls_patch",
        "image_aspect_ratio": "dynamic" if lite else "dynamic_s2",
        "mm_hidden_size": c,
        "hidden_size": hidden,
        "num_video_frames": 8,
        "s2": False,
    }
    if not lite:
        config.update(dynamic_s2=True, s2_scales=",".join(map(str, SCALES)))
        if output_scale is not None:
            config.update(s2_resize_output_to_scale_idx=output_scale)
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


def closest_grid(image: Image.Image, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """find_closest_aspect_ratio: (cols, rows), ties to the later grid if the image
    covers more than half of it."""
    width, height = image.size
    grids = sorted(
        {
            (i, j)
            for n in range(min_tiles, max_tiles + 1)
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if min_tiles <= i * j <= max_tiles
        },
        key=lambda g: g[0] * g[1],
    )
    best, best_diff = (1, 1), float("inf")
    for grid in grids:
        diff = abs(width / height - grid[0] / grid[1])
        if diff < best_diff or (
            diff == best_diff and width * height > 0.5 * TILE * TILE * grid[0] * grid[1]
        ):
            best, best_diff = grid, diff
    return best


def crops(image: Image.Image, cols: int, rows: int) -> list[Image.Image]:
    resized = image.resize((cols * TILE, rows * TILE))  # PIL's default: bicubic
    boxes = [(i % cols, i // cols) for i in range(cols * rows)]
    return [resized.crop((x * TILE, y * TILE, (x + 1) * TILE, (y + 1) * TILE)) for x, y in boxes]


def lite_tiles(image: Image.Image) -> list[Image.Image]:
    tiles = crops(image, *closest_grid(image, 1, 12))
    return tiles + [image.resize((TILE, TILE))] if len(tiles) > 1 else tiles


def s2_tiles(image: Image.Image) -> tuple[list[Image.Image], tuple[int, int]]:
    """All scales' tiles (lower scales first) and the last scale's (rows, cols)."""
    tiles = crops(image, 1, 1) + crops(image, 2, 2)
    cols, rows = closest_grid(image, 9, 12)
    return tiles + crops(image, cols, rows), (rows, cols)


class NvilaReference:
    def __init__(self, model_dir: Path):
        self.vision = transformers.SiglipVisionModel.from_pretrained(model_dir / "vision_tower")
        self.vision.eval()
        self.llm = transformers.Qwen2ForCausalLM.from_pretrained(model_dir / "llm").eval()
        self.processor = transformers.SiglipImageProcessor.from_pretrained(
            model_dir / "vision_tower"
        )
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir / "llm")
        self.tokenizer.add_tokens(["<image>", "<vila/video>"], special_tokens=True)
        self.p = load_file(model_dir / "mm_projector" / "model.safetensors")
        config = json.loads((model_dir / "config.json").read_text())
        self.lite = config["image_aspect_ratio"] == "dynamic"
        self.output_scale = config.get("s2_resize_output_to_scale_idx", 0)

    def pixels(self, tiles: list[Image.Image]) -> torch.Tensor:
        return self.processor(tiles, return_tensors="pt").pixel_values

    def tower(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision(pixels, output_hidden_states=True).hidden_states[-2]

    def project(self, x: torch.Tensor) -> torch.Tensor:
        p, ln = self.p, F.layer_norm
        if self.lite:
            x = merge_rows(x, 3)
            x = ln(x, x.shape[-1:], p["layers.1.weight"], p["layers.1.bias"], eps=1e-5)
            x = F.gelu(F.linear(x, p["layers.2.weight"], p["layers.2.bias"]))
            x = ln(x, x.shape[-1:], p["layers.4.weight"], p["layers.4.bias"], eps=1e-5)
            x = F.gelu(F.linear(x, p["layers.5.weight"], p["layers.5.bias"]))
            return F.linear(x, p["layers.7.weight"], p["layers.7.bias"])
        x = merge_rows(x, 2)
        x = ln(x, x.shape[-1:], p["layers.1.weight"], p["layers.1.bias"], eps=1e-5)
        x = F.gelu(F.linear(x, p["layers.2.weight"], p["layers.2.bias"]))
        return F.linear(x, p["layers.4.weight"], p["layers.4.bias"])

    def media(self, image: Image.Image, tiled: bool) -> list[torch.Tensor]:
        """Each media unit's features, NVILA's "\\n" embedding after each."""
        if not tiled:
            features = self.tower(self.pixels([image]))
            if not self.lite:
                features = features.repeat(1, 1, len(SCALES))
            units = list(self.project(features))
        elif self.lite:
            units = list(self.project(self.tower(self.pixels(lite_tiles(image)))))
        else:
            tiles, (rows, cols) = s2_tiles(image)
            units = [self.s2_features(self.tower(self.pixels(tiles)), rows, cols)]
        newline = self.llm.get_input_embeddings()(torch.tensor(self.tokenizer("\n").input_ids))
        return [torch.cat([unit, newline]) for unit in units]

    def s2_features(self, features: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        maps = [chessboard(features[:1], 1, 1), chessboard(features[1:5], 2, 2)]
        maps.append(chessboard(features[5:], rows, cols))
        size = maps[self.output_scale].shape[-2:]
        merged = torch.cat([F.interpolate(m, size=size, mode="area") for m in maps], dim=1)
        if self.output_scale % len(SCALES) != len(SCALES) - 1:
            rows = cols = SCALES[self.output_scale] // TILE
        h, w = size[0] // rows, size[1] // cols
        blocks = [
            merged[0, :, r * h : (r + 1) * h, c * w : (c + 1) * w].flatten(1).t()
            for r in range(rows)
            for c in range(cols)
        ]
        projected = self.project(torch.stack(blocks))
        grid = chessboard(projected, rows, cols)
        return grid[0].flatten(1).t()

    def image_units(self, images: list[Image.Image]) -> list[torch.Tensor]:
        """The media units of a conversation's images (tiled when it holds one)."""
        return [unit for image in images for unit in self.media(image, len(images) == 1)]

    def video_unit(self, frames: list[Image.Image]) -> torch.Tensor:
        """BasicVideoEncoder: each frame one resized tile, its features then "\\n"'s
        embedding, the frames concatenated into one unit."""
        return torch.cat([unit for frame in frames for unit in self.media(frame, tiled=False)])

    @torch.no_grad()
    def logits(self, prompt: str, units: list[torch.Tensor], answer: list[int]) -> torch.Tensor:
        """Logits over ``prompt`` (NVILA's text, one ``<image>`` or ``<vila/video>`` per
        media unit, ``units`` in order) with ``answer`` appended."""
        ids = self.tokenizer(prompt, add_special_tokens=False).input_ids + answer
        media_ids = self.tokenizer.convert_tokens_to_ids(["<image>", "<vila/video>"])
        assert sum(ids.count(token) for token in media_ids) == len(units)
        embed = self.llm.get_input_embeddings()
        pieces, units = [], iter(units)
        for token in ids:
            pieces.append(next(units) if token in media_ids else embed(torch.tensor([token])))
        return self.llm(inputs_embeds=torch.cat(pieces)[None]).logits[0]

    def greedy(self, prompt: str, units: list[torch.Tensor], num_tokens: int) -> list[int]:
        out: list[int] = []
        for _ in range(num_tokens):
            out.append(int(self.logits(prompt, units, out)[-1].argmax()))
        return out


def chessboard(tiles: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """merge_chessboard: ``[rows * cols, n, C]`` tiles -> ``[1, C, rows * s, cols * s]``."""
    side = math.isqrt(tiles.shape[1])
    maps = [t.t().reshape(1, -1, side, side) for t in tiles]
    lines = [torch.cat(maps[r * cols : (r + 1) * cols], dim=-1) for r in range(rows)]
    return torch.cat(lines, dim=-2)


def merge_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """NVILA's downsample blocks spelled out: zero-pad the grid to a multiple of k, then
    for each merged row, each merged column: the k x k block's tokens row by row."""
    n, num_tokens, c = x.shape
    side = math.isqrt(num_tokens)
    padded = side + (-side % k)
    grid = torch.zeros(n, padded, padded, c)
    grid[:, :side, :side] = x.reshape(n, side, side, c)
    tokens = []
    for row in range(0, padded, k):
        for col in range(0, padded, k):
            block = [grid[:, row + i, col + j] for i in range(k) for j in range(k)]
            tokens.append(torch.cat(block, dim=-1))
    return torch.stack(tokens, dim=1)
