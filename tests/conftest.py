"""Shared fixtures: tiny random Hugging Face checkpoints, built locally (never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# NOTE: set before anything imports triton (transformers does, through torch._dynamo):
# triton decides at import whether kernels compile or run in its CPU interpreter, and
# without a GPU the kernel tests (tests/kernels) run in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import transformers  # noqa: E402

from engine.demo import write_tokenizer  # noqa: E402

# Keep the whole suite off the user's real cache, and deterministic on 2 cores.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)

ARCHITECTURES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama3-scaled": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(
            num_key_value_heads=1,
            tie_word_embeddings=True,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
            rope_theta=500000.0,
        ),
    ),
    "mistral": (
        transformers.MistralConfig,
        transformers.MistralForCausalLM,
        dict(sliding_window=None),
    ),
    "qwen2": (
        transformers.Qwen2Config,
        transformers.Qwen2ForCausalLM,
        dict(tie_word_embeddings=True),
    ),
    # head_dim apart from hidden / heads, as Qwen3 checkpoints have it.
    "qwen3": (
        transformers.Qwen3Config,
        transformers.Qwen3ForCausalLM,
        dict(head_dim=32, tie_word_embeddings=True),
    ),
}


def build_tiny_model(out_dir: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write a tiny random checkpoint of ``arch`` with the demo tokenizer into ``out_dir``."""
    config_cls, model_cls, arch_overrides = ARCHITECTURES[arch]
    tokenizer = write_tokenizer(out_dir)
    config = config_cls(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **{**TINY, **arch_overrides, **overrides},
    )
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    # Random weights of std 0.02 make every token nearly equally likely; larger ones give
    # peaked, distinctive distributions, so greedy tokens are a sharp comparison.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0, 0.15)
        # Qwen3's per-head q/k norms: weights away from 1, so using them wrongly shows.
        for name, param in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                param.uniform_(0.5, 1.5)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="session", autouse=True)
def cpu_without_native_bf16():
    """dtype auto is fp32 on every host's CPU, as the fp32 oracles expect (a host with
    AVX-512 BF16 would otherwise run the suite in bf16); tests of the choice fake their
    own /proc/cpuinfo."""
    from engine import cpu_dtype

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cpu_dtype, "read_cpuinfo", lambda: "")
        yield


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """``factory(arch, **config_overrides) -> Path``, cached per argument set."""
    built: dict = {}

    def factory(arch: str = "llama", **overrides) -> Path:
        key = (arch, tuple(sorted(overrides.items())))
        if key not in built:
            built[key] = build_tiny_model(tmp_path_factory.mktemp(arch), arch, **overrides)
        return built[key]

    return factory


@pytest.fixture(scope="session")
def real_model() -> Path:
    """SmolLM2-135M-Instruct (tests/real_model.py); fails, never skips, without PyPI."""
    from tests.real_model import RealModelUnavailable, real_model_dir

    try:
        return real_model_dir()
    except RealModelUnavailable as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory) -> Path:
    return tiny_model_factory("llama")


def load_reference(model_dir: Path):
    """The transformers model for a checkpoint, in fp32, as the correctness oracle."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.eval()
