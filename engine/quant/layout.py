"""Where the quantizer finds things in a model: the decoder layers, their linears, and
which linears AWQ scales together. Names are those of the language model's transformers
module tree (a ``*ForCausalLM``); the checkpoint holds its ``model.`` under one of the
layout's ``checkpoint_bodies``: ``model.`` itself for a language model, a longer prefix
for the language model of a VLM (LLaVA, Qwen2.5-VL, Qwen3-VL), whose other parts stay in
16 bits. ``language_model_config`` gives the config that module tree is built from."""

from __future__ import annotations

from dataclasses import dataclass, replace

from transformers import PretrainedConfig, Qwen2Config, Qwen3Config
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from engine.errors import UnsupportedModelError


@dataclass(frozen=True)
class ScaleGroup:
    """Linears that read the same input, scaled together by one per-input-channel vector
    ``s`` (weights times ``s``) whose inverse is folded into ``prev_op``, the norm or linear
    that produces that input. Names are relative to the decoder layer."""

    prev_op: str
    linears: tuple[str, ...]
    # The module whose output the scale search compares: the block that the scaled
    # linears feed (attention, MLP); None means the single linear itself.
    inspect: str | None = None

    @property
    def input_of(self) -> str:
        """The linear whose recorded input stands for the whole group's."""
        return self.linears[0]


@dataclass(frozen=True)
class DecoderLayout:
    layers: str  # the ModuleList of decoder layers, e.g. "model.layers"
    embed_tokens: str
    rotary: str  # the module that turns positions into the rotary (cos, sin) tables
    scale_groups: tuple[ScaleGroup, ...]  # together they cover every quantized linear
    # Linears whose clip search is skipped: q/k feed a product of two quantized outputs,
    # which the per-linear error measures badly (AutoAWQ skips them too).
    no_clip: tuple[str, ...]
    # Linear layers left in 16 bits, for quantization_config's modules_to_not_convert.
    not_converted: tuple[str, ...]
    # The checkpoint's names for the module tree's "model." (embeddings, decoder layers,
    # final norm), tried in order: the first the checkpoint uses applies.
    checkpoint_bodies: tuple[str, ...] = ("model.",)

    @property
    def linears(self) -> tuple[str, ...]:
        return tuple(name for group in self.scale_groups for name in group.linears)

    def layer_prefix(self, index: int) -> str:
        return f"{self.layers}.{index}."


LLAMA = DecoderLayout(
    layers="model.layers",
    embed_tokens="model.embed_tokens",
    rotary="model.rotary_emb",
    scale_groups=(
        ScaleGroup(
            "input_layernorm",
            ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            inspect="self_attn",
        ),
        # Only applies when v_proj's outputs are o_proj's inputs one to one (not under GQA).
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",)),
        ScaleGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), inspect="mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",)),
    ),
    no_clip=("self_attn.q_proj", "self_attn.k_proj"),
    not_converted=("lm_head",),
)

LAYOUTS: dict[str, DecoderLayout] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": LLAMA,
    "Qwen2ForCausalLM": LLAMA,
    "Qwen3ForCausalLM": LLAMA,  # its q/k norms come after the projections AWQ scales
}


LLAVA = "LlavaForConditionalGeneration"
# The Qwen-VL language models are Qwen2's and Qwen3's (with M-RoPE, DeepStack) under the
# names transformers >= 4.52 saves (model.language_model.) or the Hub's (model.); the
# vision tower and merger stay 16-bit, as in the official AWQ checkpoints.
QWEN_VL_TEXT_CONFIGS: dict[str, type[PretrainedConfig]] = {
    "Qwen2_5_VLForConditionalGeneration": Qwen2Config,
    "Qwen3VLForConditionalGeneration": Qwen3Config,
}
QWEN_VL = replace(
    LLAMA,
    checkpoint_bodies=("model.language_model.", "model."),
    not_converted=("visual", *LLAMA.not_converted),
)


def layout_for(config) -> DecoderLayout:
    architectures = getattr(config, "architectures", None) or []
    for name in architectures:
        if name in LAYOUTS:
            return LAYOUTS[name]
        if name == LLAVA:
            return _llava_layout(config.text_config)
        if name in QWEN_VL_TEXT_CONFIGS:
            return QWEN_VL
    raise UnsupportedModelError(
        f"cannot quantize architecture {', '.join(architectures) or '(none given)'}; "
        f"supported: {', '.join(sorted([*LAYOUTS, LLAVA, *QWEN_VL_TEXT_CONFIGS]))}"
    )


def language_model_config(config) -> PretrainedConfig:
    """The config of the ``*ForCausalLM`` the quantizer builds for ``config``'s language
    model: its own, a VLM's text config, or for a Qwen-VL the plain Qwen2/Qwen3 of the
    same shapes. Calibration is text alone, whose three M-RoPE streams are equal: plain
    RoPE at the same theta; DeepStack adds nothing without images."""
    text_config = config.get_text_config(decoder=True)
    architectures = getattr(config, "architectures", None) or []
    config_classes = [QWEN_VL_TEXT_CONFIGS[n] for n in architectures if n in QWEN_VL_TEXT_CONFIGS]
    if not config_classes:
        return text_config
    fields = text_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version"):
        fields.pop(key, None)
    fields["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": text_config.rope_parameters["rope_theta"],
    }
    fields["tie_word_embeddings"] = bool(getattr(config, "tie_word_embeddings", False))
    return config_classes[0](**fields)


def _llava_layout(text_config) -> DecoderLayout:
    """A LLaVA's language model: the layout of its own ``*ForCausalLM`` (which the
    quantizer builds from ``text_config``), nested in the checkpoint."""
    architecture = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(text_config.model_type)
    if architecture not in LAYOUTS:
        raise UnsupportedModelError(
            f"cannot quantize a LLaVA whose language model is {text_config.model_type!r}; "
            f"supported: {', '.join(sorted(LAYOUTS))}"
        )
    text = LAYOUTS[architecture]
    return replace(
        text,
        # transformers >= 4.52 names (model.language_model.layers.N...), then those of
        # older checkpoints, which transformers 5 also saves (language_model.model...).
        checkpoint_bodies=("model.language_model.", "language_model.model."),
        # What AutoAWQ writes for llava-hf models, plus our language models' lm_head.
        not_converted=("vision_tower", "multi_modal_projector", *text.not_converted),
    )
