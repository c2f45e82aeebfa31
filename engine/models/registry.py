"""Which of our model classes serves which Hugging Face ``architectures`` entry."""

from __future__ import annotations

from torch import nn

from engine.errors import UnsupportedModelError
from engine.models.llama import LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM
from engine.models.llava import LlavaForConditionalGeneration
from engine.models.nvila import NvilaForCausalLM
from engine.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from engine.models.qwen3_vl import Qwen3VLForConditionalGeneration
from engine.models.vila import VilaForCausalLM

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "LlavaForConditionalGeneration": LlavaForConditionalGeneration,
    "LlavaLlamaModel": VilaForCausalLM,
    "NVILA": NvilaForCausalLM,  # VilaConfig's name for NVILA's LlavaLlamaModel
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VLForConditionalGeneration,
    "Qwen3VLForConditionalGeneration": Qwen3VLForConditionalGeneration,
}


def model_class_for(config) -> type[nn.Module]:
    architectures = getattr(config, "architectures", None) or []
    for name in architectures:
        if name in MODEL_CLASSES:
            return MODEL_CLASSES[name]
    raise UnsupportedModelError(
        f"unsupported model architecture {', '.join(architectures) or '(none given)'}; "
        f"supported: {', '.join(sorted(MODEL_CLASSES))}"
    )
