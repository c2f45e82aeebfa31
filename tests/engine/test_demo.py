"""The demo checkpoint: loadable by transformers, deterministic, built atomically, cached."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig

from engine import demo


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.demo_model_dir(tmp_path_factory.mktemp("cache"))


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGECHAT_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo.cache_dir() == tmp_path / "explicit"
    monkeypatch.setenv("EDGECHAT_CACHE_DIR", "")
    assert demo.cache_dir() == tmp_path / "xdg" / "edgechat"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert demo.cache_dir() == tmp_path / "home" / ".cache" / "edgechat"


def test_checkpoint_loads_with_transformers(demo_dir: Path) -> None:
    assert demo_dir.name == f"{demo.DEMO_MODEL_ID}-v{demo.RECIPE_VERSION}"
    assert [p.name for p in demo_dir.parent.iterdir()] == [demo_dir.name]  # no staging left
    tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_dir)
    config = model.config
    assert type(config) is LlamaConfig and config.architectures == ["LlamaForCausalLM"]
    assert len(tokenizer) == config.vocab_size == demo.VOCAB_SIZE
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (256, 704, 4)
    assert (config.num_attention_heads, config.num_key_value_heads) == (8, 4)
    assert not config.tie_word_embeddings and model.dtype == torch.float32
    bos_id, im_end_id, end_of_text_id = tokenizer.convert_tokens_to_ids(
        [demo.BOS, demo.IM_END, demo.END_OF_TEXT]
    )
    assert config.bos_token_id == tokenizer.bos_token_id == bos_id
    assert config.eos_token_id == tokenizer.eos_token_id == im_end_id
    generation_config = GenerationConfig.from_pretrained(demo_dir)
    assert generation_config.eos_token_id == [im_end_id, end_of_text_id]
    ids = torch.tensor([tokenizer.encode("Hello there")])
    with torch.no_grad():
        logits = model(ids).logits  # [1, num_tokens, vocab_size]
    assert logits.shape == (1, ids.shape[1], demo.VOCAB_SIZE) and torch.isfinite(logits).all()
    readme = (demo_dir / "README.md").read_text(encoding="utf-8")
    assert "random weights, output is meaningless" in readme
    tokenizer_config = json.loads((demo_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tokenizer_config["chat_template"] == demo.CHAT_TEMPLATE
    special_map = json.loads((demo_dir / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert special_map["bos_token"] == demo.BOS and special_map["eos_token"] == demo.IM_END


def test_chat_template_renders_and_tokenizes(demo_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    # The template emits bos and the tokenizer adds nothing, so bos appears exactly once.
    assert ids == tokenizer.encode(text)
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids.count(tokenizer.convert_tokens_to_ids(demo.IM_START)) == 5
    assert ids.count(tokenizer.eos_token_id) == 4
    with pytest.raises(Exception, match="unsupported role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "a , b ; c . d 's",  # clean-up of spaces before punctuation would break these
        "  leading and trailing spaces \n\n\ttabs\r\n",
        "emoji 😀🚀👍🏽 and CJK 今天天气很好 / 日本語 / 한국어",
        "control \x00\x01\x7f and rare ☃ ǅ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "def f(x):\n    return x ** 2  # code\n",
    ],
)
def test_encode_decode_round_trips(demo_dir: Path, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    ids = tokenizer.encode(text)
    assert tokenizer.bos_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_build_is_deterministic_and_keeps_global_rng(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        # A seed unlike the recipe's, so a build that reseeded the global RNG would show.
        torch.manual_seed(12345)
        rng_state = torch.get_rng_state()
        first = demo.demo_model_dir(tmp_path / "a")
        # Retrain rather than reuse the in-process cache, so the training itself is compared.
        demo._tokenizer_json.cache_clear()
        second = demo.demo_model_dir(tmp_path / "b")
        assert torch.equal(torch.get_rng_state(), rng_state)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_second_call_reuses_existing_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built = demo.demo_model_dir(tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in [built, *built.iterdir()]}

    def must_not_build(*args: object) -> None:
        raise AssertionError("rebuilt an existing checkpoint")

    monkeypatch.setattr(demo, "_write_model", must_not_build)
    assert demo.demo_model_dir(tmp_path) == built
    assert {p.name: p.stat().st_mtime_ns for p in [built, *built.iterdir()]} == mtimes


def test_is_demo_model(demo_dir: Path, tmp_path: Path) -> None:
    assert demo.is_demo_model(demo_dir)
    plain = LlamaConfig(vocab_size=32, hidden_size=16, num_attention_heads=2)
    plain.save_pretrained(tmp_path / "plain")
    assert not demo.is_demo_model(tmp_path / "plain")
    assert not demo.is_demo_model(tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json", encoding="utf-8")
    assert not demo.is_demo_model(tmp_path / "broken")


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def save_fails(self: object, *args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(demo.LlamaForCausalLM, "save_pretrained", save_fails)
        with pytest.raises(RuntimeError, match="disk full"):
            demo.demo_model_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert demo.is_demo_model(demo.demo_model_dir(tmp_path))  # the next call builds cleanly


def test_losing_a_race_uses_the_winners_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_model = demo._write_model
    final = tmp_path / f"{demo.DEMO_MODEL_ID}-v{demo.RECIPE_VERSION}"

    def another_process_finishes_first(out_dir: Path, tokenizer: object) -> None:
        write_model(out_dir, tokenizer)
        shutil.copytree(out_dir, final)
        (final / "winner").touch()

    monkeypatch.setattr(demo, "_write_model", another_process_finishes_first)
    assert demo.demo_model_dir(tmp_path) == final
    assert (final / "winner").exists()
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
