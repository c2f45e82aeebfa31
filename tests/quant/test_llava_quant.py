"""`quantize` on a LLaVA in Hugging Face format: the language model's decoder linears
become AutoAWQ GEMM int4, everything else (vision tower, projector, embeddings, norms,
LM head) is copied under its own name; the result loads in the engine and computes what
transformers computes with the dequantized weights. Checkpoints name the language model
either way transformers has saved LLaVA, and the output keeps the source's names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from engine import LLM
from engine.errors import UnsupportedModelError
from engine.quant.quantizer import QuantizeConfig, quantize
from tests.engine.awq_fixtures import dequantized_reference
from tests.engine.test_llava import (
    chunked_prefill_logits,
    reference_greedy,
    reference_last_logits,
)
from tests.engine.test_vila import GREEDY
from tests.engine.test_vlm_awq import (
    LLAVA_NOT_CONVERTED,
    ONE_IMAGE,
    TWO_IMAGES,
    assert_only_language_model_is_int4,
)
from tests.engine.vlm_fixtures import build_tiny_llava, load_llava_reference, save_renamed
from tests.quant.conftest import calib_ids

GROUP_SIZE = 32  # divides the tiny language model's 64 and 128 in-features
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# transformers 5 saves LLaVA under the names of older checkpoints (language_model.model.,
# vision_tower., ...); these give the names transformers 4.52 to 4.x saved it under.
CURRENT_PREFIXES = [
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower.vision_model."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
]
LAYERS = {"legacy": "language_model.model.layers.", "current": "model.language_model.layers."}
VISION = ("vision_tower.", "multi_modal_projector.")


def read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def quantize_config(method: str) -> QuantizeConfig:
    return QuantizeConfig(method=method, group_size=GROUP_SIZE, device="cpu")


def make_fp16(model_dir: Path) -> Path:
    """The checkpoint in fp16, as LLaVAs are published, so copies can be bit-identical."""
    path = model_dir / "model.safetensors"
    save_file({k: t.half() for k, t in load_file(path).items()}, path, metadata={"format": "pt"})
    config = json.loads((model_dir / "config.json").read_text())
    config["dtype"] = "float16"
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """The tiny LLaVA under each naming (same values)."""
    legacy = make_fp16(build_tiny_llava(tmp_path_factory.mktemp("llava") / "legacy"))
    current = legacy.parent / "current"
    current.mkdir()
    for path in legacy.iterdir():
        if path.name != "model.safetensors":
            (current / path.name).write_bytes(path.read_bytes())
    save_renamed(legacy / "model.safetensors", current / "model.safetensors", CURRENT_PREFIXES)
    return {"legacy": legacy, "current": current}


@pytest.fixture(scope="module")
def quantized(sources, tmp_path_factory):
    """``quantized(naming, method) -> Path``, cached; AWQ calibrates on 4 x 32 tokens."""
    built: dict = {}

    def factory(naming: str, method: str = "rtn") -> Path:
        if (naming, method) not in built:
            out = tmp_path_factory.mktemp("quantized") / f"{naming}-{method}"
            ids = calib_ids(num_samples=4, seq_len=32) if method == "awq" else None
            built[naming, method] = quantize(
                sources[naming], out, quantize_config(method), calib_ids=ids
            )
        return built[naming, method]

    return factory


@pytest.mark.parametrize("naming", ["legacy", "current"])
def test_names_dtypes_and_config_are_autoawqs(sources, quantized, naming):
    source = read_tensors(sources[naming])
    written = read_tensors(quantized(naming))
    expected = {}
    for name, tensor in source.items():
        module, _, param = name.rpartition(".")
        is_linear = module.rpartition(".")[2] in LINEARS and param == "weight"
        if name.startswith(LAYERS[naming]) and is_linear:
            out_features, in_features = tensor.shape
            groups = in_features // GROUP_SIZE
            expected[f"{module}.qweight"] = (torch.int32, (in_features, out_features // 8))
            expected[f"{module}.qzeros"] = (torch.int32, (groups, out_features // 8))
            expected[f"{module}.scales"] = (torch.float16, (groups, out_features))
        else:  # vision tower, projector, embeddings, norms, LM head
            expected[name] = (torch.float16, tuple(tensor.shape))
    assert {name: (t.dtype, tuple(t.shape)) for name, t in written.items()} == expected
    config = json.loads((quantized(naming) / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "awq",
        "bits": 4,
        "group_size": GROUP_SIZE,
        "zero_point": True,
        "version": "gemm",
        "modules_to_not_convert": [*LLAVA_NOT_CONVERTED, "lm_head"],
    }
    original = json.loads((sources[naming] / "config.json").read_text())
    for key in ("architectures", "text_config", "vision_config", "image_token_index"):
        assert config[key] == original[key]


@pytest.mark.parametrize("method", ["rtn", "awq"])
def test_vision_tower_and_projector_are_copied_bit_for_bit(sources, quantized, method):
    source = read_tensors(sources["legacy"])
    written = read_tensors(quantized("legacy", method))
    vision = [name for name in source if name.startswith(VISION)]
    assert len(vision) > 10
    for name in vision:
        assert torch.equal(written[name], source[name]), name


def test_processor_and_tokenizer_files_are_copied(sources, quantized):
    source, out = sources["legacy"], quantized("legacy")
    copied = {p.name for p in source.iterdir()} - {"model.safetensors", "config.json"}
    assert "preprocessor_config.json" in copied and "tokenizer.json" in copied
    for name in copied:
        assert (out / name).read_bytes() == (source / name).read_bytes(), name


def test_both_namings_quantize_to_the_same_tensors(quantized):
    legacy = read_tensors(quantized("legacy"))
    current = read_tensors(quantized("current"))
    renamed = {}
    for name, tensor in legacy.items():
        for old, new in CURRENT_PREFIXES:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        renamed[name] = tensor
    assert renamed.keys() == current.keys()
    for name, tensor in current.items():
        assert torch.equal(renamed[name], tensor), name


@pytest.fixture(scope="module", params=[("legacy", "rtn"), ("current", "rtn"), ("legacy", "awq")])
def loaded(request, quantized):
    """An int4 LLaVA in the engine, and transformers' model of its dequantized weights
    (the legacy naming's: both namings hold the same values)."""
    naming, method = request.param
    llm = LLM(
        str(quantized(naming, method)),
        dtype="float32",
        kv_cache_memory=0.01,
        max_num_batched_tokens=64,
    )
    reference = dequantized_reference(quantized("legacy", method), GROUP_SIZE, load_llava_reference)
    return llm, reference


def test_only_the_language_model_is_int4(loaded):
    llm, _ = loaded
    assert_only_language_model_is_int4(llm.engine.core.runner.model)


@pytest.mark.parametrize("messages", [ONE_IMAGE, TWO_IMAGES], ids=["1-image", "2-images"])
def test_logits_and_greedy_tokens_match_dequantized_transformers(loaded, messages):
    llm, reference = loaded
    token_ids, images = llm.engine.chat_request(messages)
    ours = chunked_prefill_logits(llm.engine, token_ids, images, 1000)
    theirs = reference_last_logits(reference, token_ids, images)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    output = llm.chat(messages, GREEDY)
    assert output.token_ids == reference_greedy(reference, token_ids, images, GREEDY.max_tokens)


def test_awq_changes_the_language_model_only(sources, quantized):
    """AWQ's scales move the decoder's weights (and fold into its norms) away from RTN's."""
    rtn = read_tensors(quantized("legacy", "rtn"))
    awq = read_tensors(quantized("legacy", "awq"))
    changed = {name for name in rtn if not torch.equal(rtn[name], awq[name])}
    assert changed
    assert all(name.startswith(LAYERS["legacy"]) for name in changed), sorted(changed)


def test_llava_with_an_unsupported_language_model_is_refused(tmp_path):
    model_dir = tmp_path / "llava-gemma"
    transformers.LlavaConfig(
        text_config=transformers.GemmaConfig(num_hidden_layers=1),
        architectures=["LlavaForConditionalGeneration"],
    ).save_pretrained(model_dir)
    with pytest.raises(UnsupportedModelError, match="LLaVA whose language model is 'gemma'"):
        quantize(model_dir, tmp_path / "out", quantize_config("rtn"))
    assert not (tmp_path / "out").exists()
