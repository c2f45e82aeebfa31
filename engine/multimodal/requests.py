"""A VLM's side of request handling: which token stands for an image and how many
positions one takes, the preprocessing of the images a request brings, and the checks
that a prompt's image tokens and its images agree. Models whose config names
``num_video_frames`` (VILA1.5) take videos as that many frames, each an image."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import InvalidRequestError, UnsupportedModelError
from engine.multimodal.images import ImageInput, ImageLimits, ImageProcessor
from engine.multimodal.mrope import MRopePositions
from engine.multimodal.prompt import expand_image_tokens, flatten_messages, image_positions
from engine.multimodal.video import VideoFrameInput
from engine.multimodal.video_frames import FramesAsImages

if TYPE_CHECKING:
    from engine.models.interface import VisionLanguageModel

# Tokens that stand for an image in models (VILA) whose config names none: VILA marks
# images with -200, outside the vocabulary, which our prompts (and validation) cannot
# hold; any in-vocabulary special token that text never produces serves as well, since
# its embedding is overwritten. The placeholder check keeps it out of user text.
BORROWABLE_IMAGE_TOKENS = ("<image>", "<unk>", "<|reserved_special_token_0|>")


def borrowed_image_token(tokenizer) -> int:
    """The first of ``BORROWABLE_IMAGE_TOKENS`` that the tokenizer reads as one token."""
    vocab = tokenizer.get_vocab()
    for token in BORROWABLE_IMAGE_TOKENS:
        token_id = vocab.get(token)
        if token_id is not None and tokenizer.encode(token, add_special_tokens=False) == [token_id]:
            return token_id
    raise UnsupportedModelError(
        f"the tokenizer has none of {', '.join(BORROWABLE_IMAGE_TOKENS)} to stand for images"
    )


def has_images(messages: list[dict]) -> bool:
    """Whether any message brings an image or video part (cheap: nothing is fetched or
    checked)."""
    return any(
        isinstance(part, dict) and part.get("type") in ("image_url", "video_url")
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
    )


def count_chars(messages: list[dict]) -> int:
    """The characters of the messages' text (string content and text parts)."""
    num_chars = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            num_chars += len(content)
        elif isinstance(content, list):
            num_chars += sum(
                len(part["text"])
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
    return num_chars


class ImageRequests:
    def __init__(
        self,
        model_dir: Path,
        hf_config,
        model: VisionLanguageModel,
        tokenizer,
        limits: ImageLimits | None = None,
    ):
        image_token_id = model.image_token_id
        if image_token_id is None:
            image_token_id = borrowed_image_token(tokenizer)
        self.image_token_id: int = image_token_id
        self.num_image_tokens: int = model.num_image_tokens
        self.placeholder: str = tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.processor = ImageProcessor(model_dir, hf_config, limits)
        image_size = hf_config.vision_config.image_size
        self.pixel_shape = (3, image_size, image_size)
        num_video_frames = getattr(hf_config, "num_video_frames", None)
        self.videos = (
            FramesAsImages(
                num_video_frames,
                self.processor.preprocess,
                self.placeholder,
                self.limits,
                self.num_image_tokens,
            )
            if num_video_frames
            else None
        )

    @property
    def limits(self) -> ImageLimits:
        return self.processor.limits

    def flatten(self, messages: list[dict]) -> tuple[list[dict], list[ImageInput]]:
        """String-content messages with one placeholder per image, and the images
        (decoded and preprocessed) in order."""
        return flatten_messages(
            messages,
            self.processor.load,
            self.placeholder,
            self.limits.max_images,
            load_video=self.videos and self.videos.load,
            max_videos=self.limits.max_videos,
        )

    def expand(self, token_ids: list[int], images: list[ImageInput]) -> list[int]:
        """Each image token expanded to its image's positions (here all images take
        ``num_image_tokens``)."""
        return expand_image_tokens(token_ids, self.image_token_id, self.num_image_tokens)

    def image_sizes(self, images: list[ImageInput]) -> list[int] | None:
        """Each image's number of positions; None when all take ``num_image_tokens``."""
        return None

    def mrope(self, token_ids: list[int], images: list[ImageInput]) -> MRopePositions | None:
        """The prompt's M-RoPE positions, for models that use them (not these)."""
        return None

    def check(self, images: list[ImageInput]) -> None:
        # A video's frames count towards the prompt's videos (flatten checks those).
        if sum(not isinstance(image, VideoFrameInput) for image in images) > self.limits.max_images:
            raise InvalidRequestError(f"a prompt may hold at most {self.limits.max_images} images")
        for image in images:
            if not isinstance(image, ImageInput) or image.pixel_values.shape != self.pixel_shape:
                raise InvalidRequestError(
                    f"images must be ImageInputs of shape {self.pixel_shape} "
                    "(from chat_request or ImageProcessor.load)"
                )

    def positions(self, token_ids: list[int], images: list[ImageInput]) -> list[int]:
        """The Sequence's ``image_positions`` for a prompt whose image tokens are
        expanded; raises when they do not match ``images``."""
        return image_positions(token_ids, self.image_token_id, len(images), self.num_image_tokens)
