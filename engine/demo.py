"""The built-in demo checkpoint: a tiny Llama with RANDOM weights and a locally trained tokenizer.

The server serves it when no model is named, and tests borrow its tokenizer for tiny random
models. It is generated offline and deterministically (no Hub access), written in Hugging Face
format, and labelled as a demo: ``config.json`` carries ``"edgechat_demo": true`` and the
directory holds a README saying the output is meaningless.

Special tokens: the chat template emits ``<|begin_of_text|>`` itself and the tokenizer never adds
special tokens on its own (it has no post-processor), so ``tokenizer.encode(text)`` is exactly the
text's tokens and a rendered chat prompt starts with exactly one bos.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DEMO_MODEL_ID = "edgechat-demo"
DEMO_MARKER = "edgechat_demo"
# Bump whenever anything below changes what gets written: the directory name carries it, so a
# cache built by an older recipe is ignored and a fresh checkpoint is generated beside it.
RECIPE_VERSION = 1
VOCAB_SIZE = 2048
SEED = 0
MAX_POSITIONS = 2048

BOS = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Listed first to the trainer, so they get ids 0..3 in this order.
SPECIAL_TOKENS = (BOS, END_OF_TEXT, IM_START, IM_END)

# ChatML. Unsupported roles and non-string content fail loudly instead of rendering garbage.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('edgechat-demo: unsupported role ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- if message['content'] is not string -%}"
    "{{- raise_exception('edgechat-demo: message content must be a string') -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_CORPUS_PATH = Path(__file__).with_name("demo_corpus.txt")

_README = f"""# {DEMO_MODEL_ID} (recipe v{RECIPE_VERSION})

**Demo model: random weights, output is meaningless.**

Generated locally by `engine/demo.py` so that edgechat runs with no download: a 4-layer
Llama (hidden size 256, GQA 8 query / 4 KV heads) initialised from torch seed {SEED}, and a
byte-level BPE tokenizer ({VOCAB_SIZE} tokens) trained on a small built-in corpus, with a
ChatML chat template. Serve a real checkpoint to get real answers.
"""


CACHE_DIR_ENV = "EDGECHAT_CACHE_DIR"


def cache_dir() -> Path:
    """Where edgechat caches generated files.

    ``$EDGECHAT_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/edgechat``, else
    ``~/.cache/edgechat``. Empty variables count as unset (as the XDG spec says). The directory
    is not created here.
    """
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgechat"


@functools.cache
def _tokenizer_json() -> str:
    """Train the byte-level BPE on the bundled corpus; the same string on every run and machine.

    Cached per process because tests call :func:`write_tokenizer` many times.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        # All 256 byte symbols, even those the corpus lacks, so that any text encodes.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = _CORPUS_PATH.read_text(encoding="utf-8")
    tokenizer.train_from_iterator(corpus.splitlines(keepends=True), trainer)
    return tokenizer.to_str()


def write_tokenizer(out_dir: Path) -> PreTrainedTokenizerFast:
    """Write the demo tokenizer into ``out_dir`` (created if missing) and return it.

    Writes ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template inline) and
    ``special_tokens_map.json``; the bytes are identical on every call. bos is
    ``<|begin_of_text|>``, eos ``<|im_end|>``, pad ``<|end_of_text|>``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
        # Clean-up would turn "a , b" into "a, b" and break exact round trips.
        clean_up_tokenization_spaces=False,
    )
    # Inline the template rather than a separate chat_template.jinja: older readers look only
    # in tokenizer_config.json.
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    # transformers 5 no longer writes this file; older tools still read it.
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(tokenizer.special_tokens_map, indent=2) + "\n", encoding="utf-8"
    )
    return tokenizer


def _write_model(out_dir: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    """Write config.json, generation_config.json and model.safetensors (seeded random weights)."""
    bos_id, end_of_text_id, im_end_id = tokenizer.convert_tokens_to_ids([BOS, END_OF_TEXT, IM_END])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=im_end_id,
        pad_token_id=end_of_text_id,
        architectures=["LlamaForCausalLM"],
        **{DEMO_MARKER: True},
    )
    # A private RNG state: the weights depend only on SEED, and the caller's RNG is untouched.
    # float32 whatever the caller's default dtype: the checkpoint must not depend on it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=[im_end_id, end_of_text_id], pad_token_id=end_of_text_id
    )
    model.save_pretrained(out_dir, safe_serialization=True)


def demo_model_dir(root: Path | None = None) -> Path:
    """Return the demo checkpoint directory under ``root`` (default :func:`cache_dir`).

    Builds it first if missing (a few seconds). The directory only ever appears complete: the
    build goes into a temporary sibling that is renamed into place at the end, and is deleted
    if the build fails. When two processes race, the loser discards its copy and uses the
    winner's, which is identical because the recipe is deterministic.
    """
    root = cache_dir() if root is None else Path(root)
    final = root / f"{DEMO_MODEL_ID}-v{RECIPE_VERSION}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        tokenizer = write_tokenizer(staging)
        _write_model(staging, tokenizer)
        (staging / "README.md").write_text(_README, encoding="utf-8")
        try:
            os.rename(staging, final)
        except OSError:
            # Renaming onto an existing non-empty directory fails: someone else won the race.
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def is_demo_model(model_dir: Path) -> bool:
    """True when ``model_dir/config.json`` has the demo marker; False if absent or unreadable."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get(DEMO_MARKER) is True
