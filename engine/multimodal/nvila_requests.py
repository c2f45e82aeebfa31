"""NVILA's side of request handling, as its own code builds a prompt (NVlabs/VILA
``extract_media`` in llava/utils/media.py, ``generate_content`` in llava_arch.py,
``tokenize_conversation`` in llava/utils/tokenizer.py):

- a message's parts are concatenated with nothing between them, each image an
  ``<image>`` token (a token NVILA adds to the tokenizer at load), and the text stripped;
- with exactly one image in the conversation, NVILA-Lite's ``<image>`` becomes
  ``<image>\\n`` once per tile and NVILA's one ``<image>`` stands for its multi-scale
  grid; with several images each is one tile;
- each image's features are followed by the embedding of ``"\\n"`` (the image encoder's
  ``end_tokens``): here the tokens of ``"\\n"`` follow each image's positions in the prompt,
  which embeds them alike;
- a video (when the config names ``num_video_frames``) is that many frames sampled
  uniformly, each one resized tile; NVILA's video encoder ends each frame's features with
  the ``"\\n"`` embedding as well, so its one ``<vila/video>`` token embeds as the frames'
  ``<image>`` tokens do here. Videos do not count towards the one image that is tiled
  (NVILA keeps them apart from images, ``extract_media``).
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import InvalidRequestError
from engine.multimodal.images import (
    ImageInput,
    ImageLimits,
    ImageProcessor,
    decode_image,
    image_bytes,
)
from engine.multimodal.nvila_images import NvilaImageProcessor
from engine.multimodal.prompt import flatten_messages
from engine.multimodal.requests import ImageRequests
from engine.multimodal.video import VideoFrameInput
from engine.multimodal.video_frames import FramesAsImages

IMAGE_TOKEN = "<image>"


class NvilaImageRequests(ImageRequests):
    def __init__(
        self, model_dir: Path, hf_config, model, tokenizer, limits: ImageLimits | None = None
    ):
        self.model = model
        self.image_token_id: int = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.num_image_tokens = None  # each image's own: image_sizes
        self.placeholder = IMAGE_TOKEN
        # NVILA embeds tokenizer("\n").input_ids as they come (special tokens and all).
        self.newline_ids: list[int] = tokenizer("\n").input_ids
        self.processor = ImageProcessor(model_dir, hf_config, limits)
        self.tiles = NvilaImageProcessor(self.processor, hf_config)
        self.aspect_ratio = hf_config.image_aspect_ratio
        side = hf_config.vision_config.image_size
        self.tile_shape = (3, side, side)
        self.videos: FramesAsImages | None = None  # None: videos refused
        if hf_config.num_video_frames:
            # Each frame one resized tile, then "\n"'s tokens.
            tokens_per_frame = model.num_tokens(self.tile_shape) + len(self.newline_ids)
            self.videos = FramesAsImages(
                hf_config.num_video_frames,
                self.processor.preprocess,
                IMAGE_TOKEN,
                self.limits,
                tokens_per_frame,
            )

    def flatten(self, messages: list[dict]) -> tuple[list[dict], list[ImageInput]]:
        """String-content messages as NVILA writes them, and the images' tiles (and the
        videos' frames) in order."""
        limits = self.limits
        # Images decoded only: how one is cut depends on how many the conversation holds.
        parted, media = flatten_messages(
            messages,
            lambda url: decode_image(image_bytes(url, limits), limits),
            self.placeholder,
            limits.max_images,
            keep_parts=True,
            load_video=self.videos and self.videos.load,
            max_videos=limits.max_videos,
        )
        tiled = sum(not isinstance(item, VideoFrameInput) for item in media) == 1
        pictures = iter(media)
        flat, images = [], []
        for message in parted:
            content = message.get("content")
            if not isinstance(content, list):
                flat.append({**message, "content": _stripped(content)})
                continue
            text = ""
            for part in content:
                if part["type"] == "text":
                    text += part["text"]
                    continue
                picture = next(pictures)
                if isinstance(picture, VideoFrameInput):
                    tiles = [picture]
                    text += IMAGE_TOKEN
                elif tiled and self.aspect_ratio == "dynamic":
                    tiles = self.tiles.lite_tiles(picture)
                    text += f"{IMAGE_TOKEN}\n" * len(tiles)
                else:
                    tiles = [self._one(picture, tiled)]
                    text += IMAGE_TOKEN
                images += tiles
            flat.append({**message, "content": text.strip()})
        return flat, images

    def _one(self, image, tiled: bool) -> ImageInput:
        return self.tiles.s2_tiles(image) if tiled else self.tiles.plain(image)

    def image_sizes(self, images: list[ImageInput]) -> list[int]:
        return [self.model.num_tokens(tuple(image.pixel_values.shape)) for image in images]

    def expand(self, token_ids: list[int], images: list[ImageInput]) -> list[int]:
        """Image token ``i`` repeated as many times as image ``i`` has tokens, then the
        tokens of ``"\\n"``."""
        num_placeholders = token_ids.count(self.image_token_id)
        if num_placeholders != len(images):
            raise InvalidRequestError(
                f"the prompt has {num_placeholders} image tokens for {len(images)} images"
            )
        sizes = iter(self.image_sizes(images))
        expanded: list[int] = []
        for token_id in token_ids:
            if token_id == self.image_token_id:
                expanded += [token_id] * next(sizes) + self.newline_ids
            else:
                expanded.append(token_id)
        return expanded

    def check(self, images: list[ImageInput]) -> None:
        # One image may come as up to max_tiles + 1 tiles (NVILA-Lite's thumbnail); a
        # video's frames count towards the prompt's videos (flatten checks those).
        max_inputs = max(self.limits.max_images, self.tiles.max_tiles + 1)
        if sum(not isinstance(image, VideoFrameInput) for image in images) > max_inputs:
            raise InvalidRequestError(f"a prompt may hold at most {self.limits.max_images} images")
        for image in images:
            shape = tuple(image.pixel_values.shape) if isinstance(image, ImageInput) else ()
            if shape != self.tile_shape and not (
                self.aspect_ratio == "dynamic_s2" and shape[2:] == self.tile_shape
            ):
                raise InvalidRequestError(
                    f"images must be ImageInputs of shape {self.tile_shape}, or NVILA's "
                    "tiles of one (from chat_request)"
                )

    def positions(self, token_ids: list[int], images: list[ImageInput]) -> list[int]:
        """The image tokens' positions (expanded); raises when they do not match
        ``images``."""
        positions = [p for p, token_id in enumerate(token_ids) if token_id == self.image_token_id]
        sizes = self.image_sizes(images)
        if len(positions) != sum(sizes):
            raise InvalidRequestError(
                f"the prompt has {len(positions)} image tokens but its {len(images)} images "
                f"take {sum(sizes)} ({', '.join(map(str, sizes)) or 'none'})"
            )
        return positions


def _stripped(content):
    return content.strip() if isinstance(content, str) else content
