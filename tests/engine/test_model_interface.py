"""Every model the registry serves keeps the declared interface (engine/models/)."""

from __future__ import annotations

import inspect

from engine.models.interface import TextModel, VisionLanguageModel
from engine.models.registry import MODEL_CLASSES


def members(protocol: type) -> set[str]:
    own = set(vars(protocol)) | set(getattr(protocol, "__annotations__", {}))
    return {name for name in own if not name.startswith("_")}


def test_every_registered_model_declares_the_text_model_interface():
    for name, cls in MODEL_CLASSES.items():
        missing = {m for m in members(TextModel) if not hasattr(cls, m)}
        assert not missing, f"{name} lacks {missing}"


def test_vision_language_models_declare_image_encoding():
    vision = {name for name, cls in MODEL_CLASSES.items() if hasattr(cls, "encode_images")}
    assert vision == {
        "LlavaForConditionalGeneration",
        "LlavaLlamaModel",
        "NVILA",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen3VLForConditionalGeneration",
    }
    for name in vision:
        cls = MODEL_CLASSES[name]
        missing = {m for m in members(VisionLanguageModel) if not hasattr(cls, m)}
        # num_image_tokens is set per instance by VILA (it depends on the projector).
        assert missing <= {"num_image_tokens"}, f"{name} lacks {missing}"
        assert inspect.signature(cls.forward).parameters.keys() >= {"image_embeds", "image_rows"}
