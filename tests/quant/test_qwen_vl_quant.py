"""`quantize` on Qwen2.5-VL and Qwen3-VL: the language model's decoder linears become
AutoAWQ GEMM int4 (calibrated as a plain Qwen2/Qwen3 on text), the vision tower and
merger (DeepStack's too), embeddings, norms and LM head are copied under their own names;
the result loads in the engine and computes what transformers computes with the
dequantized weights, with images. transformers saves Qwen2.5-VL under the Hub's names
(``visual.``, ``model.layers.``) and Qwen3-VL under its module names (``model.visual.``,
``model.language_model.``): either naming quantizes to the same tensors under its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine import LLM
from engine.quant.quantizer import QuantizeConfig, quantize
from tests.engine.awq_fixtures import dequantized_reference
from tests.engine.qwen2_5_vl_fixtures import build_tiny_qwen2_5_vl, load_qwen2_5_vl_reference
from tests.engine.qwen3_vl_fixtures import build_tiny_qwen3_vl, load_qwen3_vl_reference
from tests.engine.test_qwen2_5_vl import (
    GREEDY,
    one_image,
    our_logits,
    reference_greedy,
    reference_logits,
    two_images,
)
from tests.engine.test_vlm_awq import assert_only_language_model_is_int4
from tests.engine.vlm_fixtures import save_renamed

GROUP_SIZE = 32  # divides the tiny language models' 64 and 128 in-features
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HUB_NAMES = [("model.language_model.", "model."), ("model.visual.", "visual.")]
MODULE_NAMES = [("model.", "model.language_model."), ("visual.", "model.visual.")]


class Family:
    def __init__(self, build, load_reference, layers: str, visual: str, renames: list):
        self.build, self.load_reference = build, load_reference
        # Where transformers saves the decoder layers and the vision side.
        self.layers, self.visual = layers, visual
        self.renames = renames  # to the other naming


FAMILIES = {
    "qwen2_5_vl": Family(
        build_tiny_qwen2_5_vl, load_qwen2_5_vl_reference, "model.layers.", "visual.", MODULE_NAMES
    ),
    "qwen3_vl": Family(
        build_tiny_qwen3_vl,
        load_qwen3_vl_reference,
        "model.language_model.layers.",
        "model.visual.",
        HUB_NAMES,
    ),
}


def read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def rtn_config() -> QuantizeConfig:
    return QuantizeConfig(method="rtn", group_size=GROUP_SIZE, device="cpu")


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> Family:
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def source(family, tmp_path_factory) -> Path:
    return family.build(tmp_path_factory.mktemp("qwen_vl") / "source")


@pytest.fixture(scope="module")
def quantized(source, tmp_path_factory):
    """``quantized(method) -> Path``, cached; AWQ calibrates on 4 x 32 random tokens."""
    built: dict[str, Path] = {}
    vocab = json.loads((source / "config.json").read_text())["text_config"]["vocab_size"]

    def factory(method: str) -> Path:
        if method not in built:
            ids = torch.randint(0, vocab, (4, 32), generator=torch.Generator().manual_seed(1))
            config = QuantizeConfig(method=method, group_size=GROUP_SIZE, device="cpu")
            out = tmp_path_factory.mktemp("quantized") / method
            calib = ids if method == "awq" else None
            built[method] = quantize(source, out, config, calib_ids=calib)
        return built[method]

    return factory


def test_names_dtypes_and_config_are_autoawqs(family, source, quantized):
    original = read_tensors(source)
    written = read_tensors(quantized("rtn"))
    expected = {}
    for name, tensor in original.items():
        module, _, param = name.rpartition(".")
        is_linear = module.rpartition(".")[2] in LINEARS and param == "weight"
        if name.startswith(family.layers) and is_linear:
            out_features, in_features = tensor.shape
            groups = in_features // GROUP_SIZE
            expected[f"{module}.qweight"] = (torch.int32, (in_features, out_features // 8))
            expected[f"{module}.qzeros"] = (torch.int32, (groups, out_features // 8))
            expected[f"{module}.scales"] = (torch.float16, (groups, out_features))
        else:  # vision tower, mergers, embeddings, norms, LM head
            expected[name] = (torch.float16, tuple(tensor.shape))
    assert {name: (t.dtype, tuple(t.shape)) for name, t in written.items()} == expected
    vision = [name for name in original if name.startswith(family.visual)]
    assert len(vision) > 20
    for name in vision:
        assert torch.equal(written[name], original[name].half()), name
    config = json.loads((quantized("rtn") / "config.json").read_text())
    assert config["quantization_config"]["modules_to_not_convert"] == ["visual", "lm_head"]
    original_config = json.loads((source / "config.json").read_text())
    for key in ("architectures", "text_config", "vision_config", "image_token_id"):
        assert config[key] == original_config[key]


def test_awq_changes_the_language_model_only(family, quantized):
    rtn, awq = read_tensors(quantized("rtn")), read_tensors(quantized("awq"))
    changed = {name for name in rtn if not torch.equal(rtn[name], awq[name])}
    assert changed and all(name.startswith(family.layers) for name in changed), sorted(changed)


@pytest.fixture(scope="module", params=["rtn", "awq"])
def loaded(request, family, quantized):
    """The int4 model in the engine and transformers' model of its dequantized weights."""
    model_dir = quantized(request.param)
    llm = LLM(str(model_dir), dtype="float32", kv_cache_memory=0.01, max_num_batched_tokens=64)
    return llm, dequantized_reference(model_dir, GROUP_SIZE, family.load_reference)


def test_only_the_language_model_is_int4(loaded):
    assert_only_language_model_is_int4(loaded[0].engine.core.runner.model)


@pytest.mark.parametrize("messages", [one_image(), two_images()], ids=["1-image", "2-images"])
def test_logits_and_greedy_tokens_match_dequantized_transformers(loaded, messages):
    llm, reference = loaded
    engine = llm.engine
    token_ids, images = engine.chat_request(messages)
    ours, tokens = our_logits(engine, token_ids, images, chunk=17)
    theirs = reference_logits(reference, token_ids + tokens, images)[len(token_ids) - 1 :]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert tokens == reference_greedy(reference, token_ids, images)
    assert llm.chat(messages, GREEDY).token_ids == tokens


def test_the_other_naming_quantizes_to_the_same_tensors(family, source, quantized, tmp_path):
    other = tmp_path / "renamed"
    shutil.copytree(source, other)
    save_renamed(source / "model.safetensors", other / "model.safetensors", family.renames)
    written = read_tensors(quantize(other, tmp_path / "out", rtn_config()))
    renamed = {}
    for name, tensor in read_tensors(quantized("rtn")).items():
        for old, new in family.renames:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        renamed[name] = tensor
    assert renamed.keys() == written.keys()
    for name, tensor in written.items():
        assert torch.equal(renamed[name], tensor), name
