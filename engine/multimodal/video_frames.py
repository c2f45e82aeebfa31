"""Videos given to a model as a few of their frames, each an image (VILA1.5): the frames
are sampled uniformly as VILA's code does it (``llava/utils/media.py``: ``num_frames``
indices rounded from ``linspace(0, frame_count - 1)``, repeats kept for a short video),
each preprocessed as the model's images are, each standing in the prompt as one image
placeholder, the frames joined by newlines (VILA1.5 prompts a video as ``<image>\\n``
once a frame; NVILA's video encoder ends each frame's features with ``"\\n"``'s)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from engine.errors import InvalidRequestError
from engine.multimodal.images import ImageLimits, image_input
from engine.multimodal.video import (
    LoadedVideo,
    VideoFrameInput,
    VideoInfo,
    decode_frames,
    video_bytes,
)


def uniform_indices(num_frames: int, num_samples: int) -> list[int]:
    """VILA's sampling: ``num_samples`` indices spread evenly from the first frame to
    the last (rounded to the nearest frame)."""
    return np.round(np.linspace(0, num_frames - 1, num_samples)).astype(int).tolist()


class FramesAsImages:
    """``load(url)`` for a model that sees ``num_frames`` frames of a video as images
    (``preprocess``: an RGB PIL image -> that model's pixel tensor), each taking at
    least ``tokens_per_frame`` prompt positions."""

    def __init__(
        self,
        num_frames: int,
        preprocess: Callable[[Image.Image], torch.Tensor],
        placeholder: str,
        limits: ImageLimits,
        tokens_per_frame: int,
    ):
        self.num_frames = num_frames
        self.preprocess = preprocess
        self.placeholder = placeholder
        self.limits = limits
        self.tokens_per_frame = tokens_per_frame

    def sample(self, info: VideoInfo) -> list[int]:
        return uniform_indices(info.num_frames, self.num_frames)

    def load(self, url: str) -> LoadedVideo:
        self._check_tokens()
        data = video_bytes(url, self.limits)
        _, frames = decode_frames(data, self.sample, self.limits)
        inputs = []
        for frame in frames:
            image = image_input(self.preprocess(Image.fromarray(frame)))
            inputs.append(VideoFrameInput(image.pixel_values, image.content_hash))
        return LoadedVideo(
            inputs, "\n".join([self.placeholder] * len(inputs)), [{"type": "image"}] * len(inputs)
        )

    def _check_tokens(self) -> None:
        """A video the context cannot hold is refused before it is fetched: its frame
        count is the model's, whatever the video."""
        num_tokens = self.num_frames * self.tokens_per_frame
        max_tokens = self.limits.max_video_tokens
        if max_tokens is not None and num_tokens >= max_tokens:
            raise InvalidRequestError(
                f"a video sampled to {self.num_frames} frames takes {num_tokens} tokens, "
                f"more than the context of {max_tokens} holds"
            )
