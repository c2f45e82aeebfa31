"""VILA1.5 against a reference assembled from transformers' SiglipVisionModel and
LlamaForCausalLM (fed ``inputs_embeds``) with the projector's math written out, on tiny
random checkpoints in VILA's own layout, in fp32 on CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file

from engine import LLM, SamplingParams
from engine.demo import write_tokenizer
from engine.errors import UnsupportedModelError
from tests.conftest import TINY
from tests.engine.test_llava import chunked_prefill_logits
from tests.engine.vlm_fixtures import (
    IMAGE_TOKEN,
    data_url,
    image_part,
    random_image,
    text_part,
    write_vila_parts,
    write_vila_projector,
)

IMAGE_SIZE = 70  # 5 x 5 patches of 14: an odd grid, which mlp_downsample pads to 6 x 6
VISION_SIZE = 32
GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
URLS = [data_url(random_image(seed, size=(60 + 7 * seed, 50))) for seed in range(3)]
VICUNA_SYSTEM = "A chat between a curious user and an artificial intelligence assistant."


def build_tiny_vila(
    out_dir: Path, projector: str, chat_template: bool = False, llama3: bool = False
) -> Path:
    """A random VILA1.5 checkpoint: llm/, vision_tower/ and mm_projector/ beside a
    ``llava_llama`` config.json. The llm's tokenizer (the demo's plus ``<image>``, and
    Llama 3's header tokens if ``llama3``) has no chat template unless ``chat_template``."""
    torch.manual_seed(0)
    tokenizer = write_tokenizer(out_dir / "llm")
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if llama3:
        headers = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        tokenizer.add_tokens(headers, special_tokens=True)
    if not chat_template:
        tokenizer.chat_template = None
    tokenizer.save_pretrained(out_dir / "llm", save_jinja_files=False)
    text = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TINY,
    )
    vision = transformers.SiglipVisionConfig(
        hidden_size=VISION_SIZE,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=14,
    )
    llm = transformers.LlamaForCausalLM(text)
    write_vila_parts(out_dir, llm, transformers.SiglipVisionModel(vision))
    hidden, c = text.hidden_size, VISION_SIZE
    shapes = {
        "mlp2x_gelu": {"layers.0": (hidden, c), "layers.2": (hidden, hidden)},
        "mlp_downsample": {
            "layers.1": (4 * c,),
            "layers.2": (hidden, 4 * c),
            "layers.4": (hidden, hidden),
        },
    }[projector]
    write_vila_projector(out_dir, projector, shapes)
    (out_dir / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlavaLlamaModel"],
                "model_type": "llava_llama",
                "mm_projector_type": projector,
                "mm_vision_select_layer": -2,
                "mm_vision_select_feature": "cls_patch",
                "image_aspect_ratio": "resize",
                "mm_hidden_size": c,
                "hidden_size": hidden,
            }
        )
    )
    return out_dir


class Reference:
    """VILA's forward pass from transformers' parts and the projector written out."""

    def __init__(self, model_dir: Path):
        self.vision = transformers.SiglipVisionModel.from_pretrained(model_dir / "vision_tower")
        self.llm = transformers.LlamaForCausalLM.from_pretrained(model_dir / "llm").eval()
        self.projector = load_file(model_dir / "mm_projector" / "model.safetensors")
        config = json.loads((model_dir / "config.json").read_text())
        self.downsample = config["mm_projector_type"] == "mlp_downsample"

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.vision.eval()(pixel_values, output_hidden_states=True).hidden_states[-2]
        p = self.projector
        if not self.downsample:
            x = F.linear(x, p["layers.0.weight"], p["layers.0.bias"])
            return F.linear(F.gelu(x), p["layers.2.weight"], p["layers.2.bias"])
        x = merge_2x2(x)
        x = F.layer_norm(x, x.shape[-1:], p["layers.1.weight"], p["layers.1.bias"], eps=1e-5)
        x = F.linear(x, p["layers.2.weight"], p["layers.2.bias"])
        return F.linear(F.gelu(x), p["layers.4.weight"], p["layers.4.bias"])

    @torch.no_grad()
    def logits(self, token_ids, images, image_token_id: int) -> torch.Tensor:
        ids = torch.tensor(token_ids)
        embeds = self.llm.get_input_embeddings()(ids)
        if images:
            pixels = torch.stack([image.pixel_values for image in images])
            embeds[ids == image_token_id] = self.image_features(pixels).flatten(0, 1)
        return self.llm(inputs_embeds=embeds[None]).logits[0]

    def greedy(self, token_ids, images, image_token_id: int) -> list[int]:
        out: list[int] = []
        for _ in range(GREEDY.max_tokens):
            logits = self.logits(token_ids + out, images, image_token_id)
            out.append(int(logits[-1].argmax()))
        return out


def merge_2x2(x: torch.Tensor) -> torch.Tensor:
    """VILA's DownSampleBlock spelled out: zero-pad the grid to an even side, then for
    each merged column, each merged row: the 2x2 block's four tokens side by side."""
    n, num_tokens, c = x.shape
    side = math.isqrt(num_tokens)
    even = side + side % 2
    grid = torch.zeros(n, even, even, c)
    grid[:, :side, :side] = x.reshape(n, side, side, c)
    tokens = []
    for col in range(0, even, 2):
        for row in range(0, even, 2):
            block = [grid[:, row, col], grid[:, row, col + 1]]
            block += [grid[:, row + 1, col], grid[:, row + 1, col + 1]]
            tokens.append(torch.cat(block, dim=-1))
    return torch.stack(tokens, dim=1)


def one_image(url: str = URLS[0]) -> list[dict]:
    return [{"role": "user", "content": [image_part(url), text_part("What is this?")]}]


def two_images(a: str = URLS[0], b: str = URLS[1]) -> list[dict]:
    return [
        {"role": "user", "content": [image_part(a), text_part("and"), image_part(b)]},
        {"role": "assistant", "content": "Two pictures."},
        {"role": "user", "content": [text_part("Which is brighter?")]},
    ]


@pytest.fixture(scope="module", params=["mlp2x_gelu", "mlp_downsample"])
def vila(request, tmp_path_factory):
    model_dir = build_tiny_vila(tmp_path_factory.mktemp(request.param), request.param)
    llm = LLM(str(model_dir), kv_cache_memory=0.01, max_num_batched_tokens=64)
    return llm, Reference(model_dir)


def test_image_token_count_follows_the_projector(vila):
    llm, reference = vila
    assert llm.engine.vision.num_image_tokens == (9 if reference.downsample else 25)


@pytest.mark.parametrize("messages", [one_image(), two_images()], ids=["1-image", "2-images"])
@pytest.mark.parametrize("chunk", [7, 1000])
def test_prefill_logits_match_reference(vila, messages, chunk):
    llm, reference = vila
    engine = llm.engine
    token_ids, images = engine.chat_request(messages)
    ours = chunked_prefill_logits(engine, token_ids, images, chunk)
    theirs = reference.logits(token_ids, images, engine.vision.image_token_id)[-1]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("messages", [one_image(), two_images()], ids=["1-image", "2-images"])
def test_greedy_tokens_match_reference(vila, messages):
    llm, reference = vila
    token_ids, images = llm.engine.chat_request(messages)
    output = llm.chat(messages, GREEDY)
    assert output.prompt_token_ids == token_ids
    assert output.token_ids == reference.greedy(token_ids, images, llm.engine.vision.image_token_id)


def test_swapping_images_changes_the_output(vila):
    llm, _ = vila
    first = llm.chat(two_images(URLS[0], URLS[1]), GREEDY).token_ids
    assert llm.chat(two_images(URLS[1], URLS[0]), GREEDY).token_ids != first


# Conversations rendered as VILA's llava/conversation.py (NVlabs/VILA) builds them.
TWO_TURNS = [
    {"role": "user", "content": "q1"},
    {"role": "assistant", "content": "a1"},
    {"role": "user", "content": "q2"},
]


def test_vicuna_v1_format(vila):
    llm, _ = vila
    engine = llm.engine
    eos = engine.tokenizer.eos_token
    assert engine.inputs.chat_template.render(TWO_TURNS) == (
        f"<|begin_of_text|>{VICUNA_SYSTEM} The assistant gives helpful, detailed, and polite "
        f"answers to the user's questions. USER: q1 ASSISTANT: a1{eos}USER: q2 ASSISTANT:"
    )
    with_system = [{"role": "system", "content": "Be brief."}, *TWO_TURNS[:1]]
    assert engine.inputs.chat_template.render(with_system) == (
        "<|begin_of_text|>Be brief. USER: q1 ASSISTANT:"
    )
    token_ids, _ = engine.chat_request(one_image())
    assert f" USER: {IMAGE_TOKEN}" in engine.tokenizer.decode(token_ids)


def test_llama3_format_wins_over_the_tokenizer_template(tmp_path):
    """A Llama-3 language model (its tokenizer knows the header tokens) gets VILA's
    llama_3 format with VILA's system prompt, not the llm tokenizer's own template."""
    model_dir = build_tiny_vila(tmp_path / "vila", "mlp2x_gelu", chat_template=True, llama3=True)
    engine = LLM(str(model_dir), kv_cache_memory=0.01).engine
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert engine.inputs.chat_template.render(TWO_TURNS) == (
        "<|begin_of_text|>"
        + header.format("system")
        + "You are a helpful language and vision assistant. You are able to understand the "
        "visual content that the user provides, and assist the user with a variety of tasks "
        "using natural language.<|eot_id|>"
        + header.format("user")
        + "q1<|eot_id|>"
        + header.format("assistant")
        + "a1<|eot_id|>"
        + header.format("user")
        + "q2<|eot_id|>"
        + header.format("assistant")
    )


def test_chat_template_overrides(tmp_path):
    model_dir = build_tiny_vila(tmp_path / "vila", "mlp2x_gelu", chat_template=True)
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    engine = LLM(str(model_dir), kv_cache_memory=0.01, chat_template=str(template)).engine
    token_ids, images = engine.chat_request(one_image())
    assert engine.tokenizer.decode(token_ids).startswith(f"[{IMAGE_TOKEN}")
    assert len(images) == 1


def test_s2_checkpoints_are_refused_by_name(tmp_path):
    model_dir = build_tiny_vila(tmp_path / "vila", "mlp2x_gelu")
    config = json.loads((model_dir / "config.json").read_text())
    config.update(s2=True, s2_scales="384,768,1152")
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="S2"):
        LLM(str(model_dir), kv_cache_memory=0.01)
