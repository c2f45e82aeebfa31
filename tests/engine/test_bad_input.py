"""Bad input gets a clear ValueError, and the engine goes on serving others."""

from __future__ import annotations

import json
import shutil

import pytest

from engine import (
    LLM,
    EngineConfig,
    InvalidRequestError,
    ModelLoadError,
    PromptTooLongError,
    SamplingParams,
    UnsupportedModelError,
)

GREEDY = SamplingParams(max_tokens=4, temperature=0)


@pytest.fixture(scope="module")
def llm(tiny_llama) -> LLM:
    return LLM(str(tiny_llama), kv_cache_memory=0.01)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_tokens=0), "max_tokens"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=-0.1), "temperature"),
        (dict(min_p=2.0), "min_p"),
        (dict(presence_penalty=3.0), "presence_penalty"),
        (dict(logprobs=99), "logprobs"),
        (dict(stop=[""]), "stop"),
        (dict(logit_bias={5: 500.0}), "logit_bias"),
    ],
)
def test_bad_sampling_params(kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("prompt", ["", []])
def test_empty_prompt(llm, prompt):
    with pytest.raises(InvalidRequestError, match="empty"):
        llm.generate([prompt], GREEDY)


def test_prompt_longer_than_the_context(llm):
    too_long = [5] * llm.engine.max_model_len
    with pytest.raises(PromptTooLongError) as info:
        llm.generate([too_long], GREEDY)
    assert info.value.num_prompt_tokens == llm.engine.max_model_len
    assert str(llm.engine.max_model_len) in str(info.value)


def test_token_ids_outside_the_vocabulary(llm):
    with pytest.raises(InvalidRequestError, match="token ids"):
        llm.generate([[1, 2, 10**6]], GREEDY)


def test_logit_bias_outside_the_vocabulary(llm):
    with pytest.raises(InvalidRequestError, match="logit_bias"):
        llm.generate([[1, 2]], SamplingParams(logit_bias={10**6: 1.0}))


def test_engine_keeps_serving_after_bad_requests(llm):
    good = [1, 40, 50, 60]
    before = llm.generate([good], GREEDY)[0].token_ids
    for bad in ([""], [[]], [[5] * 10_000]):
        with pytest.raises(InvalidRequestError):
            llm.generate([good] + bad, GREEDY)
    assert llm.generate([good], GREEDY)[0].token_ids == before
    assert llm.engine.core.block_manager.num_free_blocks == llm.engine.core.block_manager.num_blocks


def test_generation_stops_at_the_context_limit(tiny_llama):
    llm = LLM(str(tiny_llama), kv_cache_memory=0.01, max_model_len=20)
    output = llm.generate([[1] * 15], SamplingParams(max_tokens=50, ignore_eos=True))[0]
    assert output.finish_reason == "length" and len(output.token_ids) == 5


def test_unknown_model_path(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a checkpoint directory nor a Hub ID"):
        LLM(str(tmp_path / "missing" / "model"))


def test_hub_id_offline_names_the_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="someone/not-cached"):
        LLM("someone/not-cached")


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_safetensors(tiny_llama, tmp_path):
    model_dir = copy_checkpoint(tiny_llama, tmp_path / "m")
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        LLM(str(model_dir), kv_cache_memory=0.01)


def test_corrupt_safetensors_header(tiny_llama, tmp_path):
    model_dir = copy_checkpoint(tiny_llama, tmp_path / "m")
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:20] = b"not json!!!!"
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupt"):
        LLM(str(model_dir), kv_cache_memory=0.01)


def test_unsupported_architecture_lists_the_supported(tiny_llama, tmp_path):
    model_dir = copy_checkpoint(tiny_llama, tmp_path / "m")
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM"):
        LLM(str(model_dir), kv_cache_memory=0.01)


def test_bad_engine_config():
    with pytest.raises(ValueError, match="block_size"):
        EngineConfig(block_size=12)
    with pytest.raises(ValueError, match="dtype"):
        EngineConfig(dtype="int3")


def test_chat_without_a_template_says_how_to_fix_it(tiny_llama, tmp_path):
    model_dir = copy_checkpoint(tiny_llama, tmp_path / "m")
    config_path = model_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    del tokenizer_config["chat_template"]
    config_path.write_text(json.dumps(tokenizer_config))
    llm = LLM(str(model_dir), kv_cache_memory=0.01)
    with pytest.raises(InvalidRequestError, match="--chat-template"):
        llm.chat([{"role": "user", "content": "hi"}])
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}>>")
    with_file = LLM(str(model_dir), kv_cache_memory=0.01, chat_template=str(template))
    output = with_file.chat([{"role": "user", "content": "hi"}], GREEDY)
    assert with_file.tokenizer.decode(output.prompt_token_ids) == "[user] hi\n>>"
