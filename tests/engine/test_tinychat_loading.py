"""TinyChat's own int4 checkpoints (a ``*-w4-g*-awq-v2.pt`` in place of the language
model's safetensors, as VILA1.5's AWQ repositories ship) load into exactly the model the
same weights in AutoAWQ GEMM format load into, for a VILA and for a plain Llama."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine import LLM
from engine.errors import UnsupportedModelError
from engine.quant.pack import unpack_int4
from tests.engine.awq_fixtures import dequantized_reference, write_awq_checkpoint
from tests.engine.test_vila import GREEDY, Reference, build_tiny_vila
from tests.engine.test_vlm_awq import ONE_IMAGE, vila_with_llm
from tests.quant.test_tinychat import pack_tinychat, padded_rows

GROUP_SIZE = 32


def write_tinychat_checkpoint(awq_dir: Path, out_dir: Path, file_name: str) -> Path:
    """A copy of the AutoAWQ checkpoint ``awq_dir`` with its weights as TinyChat saves
    them: one torch.save'd state dict, int4 layers as qweight / scales / scaled_zeros, and
    no quantization_config in config.json."""
    shutil.copytree(awq_dir, out_dir, ignore=shutil.ignore_patterns("model.safetensors"))
    stored = load_file(awq_dir / "model.safetensors")
    state = {}
    for name, tensor in stored.items():
        layer, _, kind = name.rpartition(".")
        if kind == "qweight":
            codes = unpack_int4(tensor).t()  # [N, K]
            zeros = unpack_int4(stored[f"{layer}.qzeros"])  # [K/G, N]
            scales = stored[f"{layer}.scales"]
            num_rows = padded_rows(codes.shape[1], GROUP_SIZE)
            padded = torch.zeros(num_rows, codes.shape[0], dtype=torch.float16)
            scaled_zeros = padded.clone()
            padded[: len(scales)] = scales
            scaled_zeros[: len(scales)] = (-(scales.float() * zeros)).half()
            state[f"{layer}.qweight"] = pack_tinychat(codes)
            state[f"{layer}.scales"] = padded
            state[f"{layer}.scaled_zeros"] = scaled_zeros
        elif kind not in ("qzeros", "scales"):
            state[name] = tensor
    torch.save(state, out_dir / file_name)
    config = json.loads((out_dir / "config.json").read_text())
    del config["quantization_config"]
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


def assert_same_weights(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    expected = theirs.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


@pytest.fixture(scope="module")
def vila_dirs(tmp_path_factory):
    """A tiny VILA, the same with llm/ in AutoAWQ format, and with llm/ in TinyChat's."""
    root = tmp_path_factory.mktemp("vila-tinychat")
    source = build_tiny_vila(root / "source", "mlp_downsample")
    awq_llm = write_awq_checkpoint(source / "llm", root / "llm-awq", GROUP_SIZE, False, ())
    tinychat_llm = write_tinychat_checkpoint(
        awq_llm, root / "llm-tinychat", "vila-1.5-3b-w4-g32-awq-v2.pt"
    )
    return (
        source,
        vila_with_llm(source, awq_llm, root / "awq"),
        vila_with_llm(source, tinychat_llm, root / "tinychat"),
    )


def test_vila_tinychat_weights_equal_autoawq_and_match_the_reference(vila_dirs):
    source, awq_dir, tinychat_dir = vila_dirs
    assert not list((tinychat_dir / "llm").glob("*.safetensors"))
    llm = LLM(str(tinychat_dir), dtype="float32", kv_cache_memory=0.01)
    autoawq = LLM(str(awq_dir), dtype="float32", kv_cache_memory=0.01)
    assert_same_weights(llm.engine.core.runner.model, autoawq.engine.core.runner.model)
    reference = Reference(source)
    reference.llm = dequantized_reference(awq_dir / "llm", GROUP_SIZE)
    token_ids, images = llm.engine.chat_request(ONE_IMAGE)
    expected = reference.greedy(token_ids, images, llm.engine.vision.image_token_id)
    assert llm.chat(ONE_IMAGE, GREEDY).token_ids == expected


def test_plain_llama_tinychat_checkpoint_loads(tiny_llama, tmp_path):
    awq_dir = write_awq_checkpoint(tiny_llama, tmp_path / "awq", GROUP_SIZE, False, ())
    tinychat_dir = write_tinychat_checkpoint(
        awq_dir, tmp_path / "tinychat", "llama-w4-g32-awq-v2.pt"
    )
    llm = LLM(str(tinychat_dir), dtype="float32", kv_cache_memory=0.01)
    autoawq = LLM(str(awq_dir), dtype="float32", kv_cache_memory=0.01)
    assert_same_weights(llm.engine.core.runner.model, autoawq.engine.core.runner.model)


def test_int4_vision_tower_in_a_tinychat_file_is_refused(vila_dirs, tmp_path):
    _, _, tinychat_dir = vila_dirs
    model_dir = shutil.copytree(tinychat_dir, tmp_path / "bad")
    [path] = (model_dir / "llm").glob("*.pt")
    state = torch.load(path, weights_only=True)
    for part in ("qweight", "scales", "scaled_zeros"):
        state[f"lm_head.{part}"] = state[f"model.layers.0.mlp.down_proj.{part}"]
    torch.save(state, path)
    with pytest.raises(UnsupportedModelError, match="lm_head is AWQ int4"):
        LLM(str(model_dir), dtype="float32", kv_cache_memory=0.01)
