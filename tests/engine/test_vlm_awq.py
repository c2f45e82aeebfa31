"""A VLM whose language model is AutoAWQ int4 and whose vision tower and projector are
16-bit: LLaVA in Hugging Face format and VILA1.5's split layout load and generate what
the 16-bit references generate with each quantized linear replaced by its dequantized
weight; `edgechat quantize` refuses a whole VILA and quantizes its llm/ on its own
(tests/quant/test_llava_quant.py quantizes LLaVA)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from engine import LLM
from engine.errors import QuantizationError, UnsupportedModelError
from engine.layers.awq_linear import AWQLinear, MergedAWQLinear
from engine.layers.cpu_quant import Int4Linear
from engine.quant.quantizer import QuantizeConfig, quantize
from tests.engine.awq_fixtures import dequantized_reference, write_awq_checkpoint
from tests.engine.test_llava import (
    chunked_prefill_logits,
    reference_greedy,
    reference_last_logits,
)
from tests.engine.test_vila import GREEDY, Reference, build_tiny_vila
from tests.engine.vlm_fixtures import (
    build_tiny_llava,
    data_url,
    image_part,
    load_llava_reference,
    random_image,
    save_renamed,
    text_part,
)

GROUP_SIZE = 32  # divides the tiny language model's 64 and 128 in-features
RTN = QuantizeConfig(method="rtn", group_size=GROUP_SIZE, device="cpu")
# What AutoAWQ writes for a llava-hf model (e.g. ybelkada/llava-1.5-7b-hf-awq's config.json).
LLAVA_NOT_CONVERTED = ("vision_tower", "multi_modal_projector")
# transformers >= 4.52 names -> the names of the AutoAWQ LLaVA checkpoints on the Hub.
LEGACY_LLAVA_PREFIXES = [
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
]
URLS = [data_url(random_image(seed, size=(60 + 7 * seed, 50))) for seed in range(2)]
ONE_IMAGE = [{"role": "user", "content": [text_part("What is this?"), image_part(URLS[0])]}]
TWO_IMAGES = [
    {"role": "user", "content": [image_part(URLS[0]), text_part("and"), image_part(URLS[1])]},
    {"role": "assistant", "content": "Two pictures."},
    {"role": "user", "content": [text_part("Which is brighter?")]},
]
MESSAGES = pytest.mark.parametrize("messages", [ONE_IMAGE, TWO_IMAGES], ids=["1-image", "2-images"])


def assert_only_language_model_is_int4(model: nn.Module) -> None:
    # On a CPU the int4 layers are repacked for torch's kernel (engine/layers/cpu_quant.py).
    layer = model.language_model.model.layers[0]
    assert isinstance(layer.self_attn.qkv_proj, (MergedAWQLinear, Int4Linear))
    assert isinstance(layer.mlp.down_proj, (AWQLinear, Int4Linear))
    for name, module in model.named_modules():
        if isinstance(module, (AWQLinear, Int4Linear)):
            assert name.startswith("language_model.model.layers."), name


def legacy_named_copy(awq_dir: Path, out_dir: Path) -> Path:
    """``awq_dir`` with its tensors under the names AutoAWQ saved LLaVA with."""
    shutil.copytree(awq_dir, out_dir)
    save_renamed(
        awq_dir / "model.safetensors", out_dir / "model.safetensors", LEGACY_LLAVA_PREFIXES
    )
    return out_dir


@pytest.fixture(scope="module")
def llava_source(tmp_path_factory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("llava") / "source")


@pytest.fixture(scope="module")
def llava_awq(llava_source) -> Path:
    out_dir = llava_source.parent / "awq"
    return write_awq_checkpoint(llava_source, out_dir, GROUP_SIZE, False, LLAVA_NOT_CONVERTED)


@pytest.fixture(scope="module")
def llava_reference(llava_awq):
    return dequantized_reference(llava_awq, GROUP_SIZE, load_llava_reference)


@pytest.fixture(scope="module", params=["transformers-names", "autoawq-names"])
def llava_llm(request, llava_awq) -> LLM:
    model_dir = llava_awq
    if request.param == "autoawq-names":
        model_dir = legacy_named_copy(llava_awq, llava_awq.parent / "awq-legacy")
    return LLM(str(model_dir), dtype="float32", kv_cache_memory=0.01, max_num_batched_tokens=64)


def test_llava_language_model_is_int4_and_vision_is_dense(llava_llm):
    assert_only_language_model_is_int4(llava_llm.engine.core.runner.model)


@MESSAGES
@pytest.mark.parametrize("chunk", [5, 1000])
def test_llava_prefill_logits_match_dequantized_transformers(
    llava_llm, llava_reference, messages, chunk
):
    engine = llava_llm.engine
    token_ids, images = engine.chat_request(messages)
    ours = chunked_prefill_logits(engine, token_ids, images, chunk)
    theirs = reference_last_logits(llava_reference, token_ids, images)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@MESSAGES
def test_llava_greedy_tokens_match_dequantized_transformers(llava_llm, llava_reference, messages):
    token_ids, images = llava_llm.engine.chat_request(messages)
    output = llava_llm.chat(messages, GREEDY)
    assert output.token_ids == reference_greedy(
        llava_reference, token_ids, images, GREEDY.max_tokens
    )


def test_int4_vision_tower_is_refused_by_name(llava_source, tmp_path):
    awq_dir = write_awq_checkpoint(
        llava_source, tmp_path / "awq", GROUP_SIZE, False, ("multi_modal_projector",)
    )
    with pytest.raises(UnsupportedModelError, match=r"vision_tower\.encoder\.layers\.\d+\."):
        LLM(str(awq_dir), kv_cache_memory=0.01)


def vila_with_llm(source: Path, llm_dir: Path, out_dir: Path) -> Path:
    """A copy of the VILA checkpoint ``source`` whose llm/ is ``llm_dir``."""
    shutil.copytree(
        source, out_dir, ignore=lambda folder, _: ["llm"] if folder == str(source) else []
    )
    shutil.copytree(llm_dir, out_dir / "llm")
    return out_dir


@pytest.fixture(scope="module")
def vila_source(tmp_path_factory) -> Path:
    return build_tiny_vila(tmp_path_factory.mktemp("vila") / "source", "mlp2x_gelu")


@pytest.fixture(scope="module")
def vila_awq(vila_source):
    """The VILA checkpoint with llm/ in AutoAWQ format, and its dequantized reference."""
    llm_dir = write_awq_checkpoint(
        vila_source / "llm", vila_source.parent / "llm-awq", GROUP_SIZE, False, ()
    )
    model_dir = vila_with_llm(vila_source, llm_dir, vila_source.parent / "awq")
    reference = Reference(vila_source)
    reference.llm = dequantized_reference(llm_dir, GROUP_SIZE)
    llm = LLM(str(model_dir), dtype="float32", kv_cache_memory=0.01, max_num_batched_tokens=64)
    return llm, reference


def test_vila_language_model_is_int4_and_vision_is_dense(vila_awq):
    llm, _ = vila_awq
    assert_only_language_model_is_int4(llm.engine.core.runner.model)


@MESSAGES
@pytest.mark.parametrize("chunk", [7, 1000])
def test_vila_prefill_logits_match_dequantized_reference(vila_awq, messages, chunk):
    llm, reference = vila_awq
    engine = llm.engine
    token_ids, images = engine.chat_request(messages)
    ours = chunked_prefill_logits(engine, token_ids, images, chunk)
    theirs = reference.logits(token_ids, images, engine.vision.image_token_id)[-1]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@MESSAGES
def test_vila_greedy_tokens_match_dequantized_reference(vila_awq, messages):
    llm, reference = vila_awq
    token_ids, images = llm.engine.chat_request(messages)
    expected = reference.greedy(token_ids, images, llm.engine.vision.image_token_id)
    assert llm.chat(messages, GREEDY).token_ids == expected


def test_quantize_refuses_whole_vila_and_names_its_llm_folder(vila_source, tmp_path):
    with pytest.raises(QuantizationError, match=re.escape(f"--model {vila_source / 'llm'}")):
        quantize(vila_source, tmp_path / "out", RTN)


def test_quantized_vila_llm_folder_loads_under_vila(vila_source, tmp_path):
    llm_dir = quantize(vila_source / "llm", tmp_path / "llm-int4", RTN)
    config = json.loads((llm_dir / "config.json").read_text())
    assert config["quantization_config"]["version"] == "gemm"
    model_dir = vila_with_llm(vila_source, llm_dir, tmp_path / "vila-int4")
    llm = LLM(str(model_dir), dtype="float32", kv_cache_memory=0.01)
    assert_only_language_model_is_int4(llm.engine.core.runner.model)
    reference = Reference(vila_source)
    reference.llm = dequantized_reference(llm_dir, GROUP_SIZE)
    token_ids, images = llm.engine.chat_request(ONE_IMAGE)
    expected = reference.greedy(token_ids, images, llm.engine.vision.image_token_id)
    assert llm.chat(ONE_IMAGE, GREEDY).token_ids == expected
