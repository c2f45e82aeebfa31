"""A VILA1.5-3B-style language model whose tokenizer ships only as a SentencePiece
``tokenizer.model`` (Llama 2's, no tokenizer.json and no ``<image>`` token) loads: the
tokenizer is converted (sentencepiece + protobuf), ``<unk>`` stands for images, prompts
follow vicuna_v1, and generation matches the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece

from engine import LLM, demo
from tests.engine.test_vila import GREEDY, Reference, build_tiny_vila, one_image

SPM_VOCAB = 400  # below the tiny llm's 2049 embeddings
CORPUS = Path(demo.__file__).with_name("demo_corpus.txt")


def write_llama2_tokenizer(out_dir: Path) -> None:
    """Replace ``out_dir``'s tokenizer by a SentencePiece BPE with byte fallback and
    Llama 2's special tokens (<unk> 0, <s> 1, </s> 2), as Llama-2 checkpoints ship it."""
    for path in out_dir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens")):
            path.unlink()
    sentencepiece.SentencePieceTrainer.train(
        input=str(CORPUS),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=SPM_VOCAB,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.99,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (out_dir / "tokenizer.vocab").unlink()
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def vila_llama2(tmp_path_factory):
    model_dir = build_tiny_vila(tmp_path_factory.mktemp("vila-spm") / "vila", "mlp_downsample")
    write_llama2_tokenizer(model_dir / "llm")
    return model_dir


def test_sentencepiece_only_tokenizer_loads_and_generates(vila_llama2):
    llm = LLM(str(vila_llama2), kv_cache_memory=0.01)
    engine = llm.engine
    tokenizer = engine.tokenizer
    assert len(tokenizer) == SPM_VOCAB and "<image>" not in tokenizer.get_vocab()
    assert engine.vision.image_token_id == tokenizer.unk_token_id == 0
    token_ids, images = engine.chat_request(one_image())
    assert token_ids[0] == tokenizer.bos_token_id == 1
    assert token_ids.count(0) == engine.vision.num_image_tokens
    text = tokenizer.decode([t for t in token_ids if t != 0])
    assert text.startswith("<s>A chat between a curious user") and text.endswith("ASSISTANT:")
    expected = Reference(vila_llama2).greedy(token_ids, images, engine.vision.image_token_id)
    assert llm.chat(one_image(), GREEDY).token_ids == expected
