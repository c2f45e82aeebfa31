"""Images in requests: ``data:`` URLs (or http(s) and allowed ``file:`` URLs, read by
fetch.py) decoded with Pillow (bounded in bytes and pixels), then preprocessed the way
the model's Hugging Face image processor does (CLIP: resize the shortest side, center
crop; LLaVA's ``pad``: first pad to a square with the mean colour), into normalised
``[3, H, W]`` fp32 pixel tensors."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps

from engine.errors import InvalidRequestError, ModelLoadError
from engine.multimodal.fetch import (
    MediaURLPolicy,
    fetch_http,
    read_local_file,
    too_large,
    with_article,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# Longer side over shorter side. Past this an image is a strip, not a picture: resized
# to the tower's shortest edge (or padded to a square) it would grow without bound.
MAX_ASPECT_RATIO = 20


@dataclass(frozen=True)
class ImageLimits:
    max_images: int = 8
    max_bytes: int = 20 * 1024 * 1024
    # Checked from the header, before decoding (a small file may expand into gigabytes),
    # and again on the sizes the model's resize or padding would make, before those.
    max_pixels: int = 40_000_000
    # Seconds for a whole http(s) fetch, redirects included.
    fetch_timeout: float = 10.0
    # file: URLs are read only from inside this directory; None refuses them all.
    local_media_dir: Path | None = None
    url_policy: MediaURLPolicy = MediaURLPolicy()
    # Videos (video.py) are fetched under the rules above, within limits of their own:
    # bytes and the frame count are checked before any frame is decoded, each frame
    # against max_pixels, and decoding the sampled frames within the timeout.
    max_videos: int = 2
    max_video_bytes: int = 64 * 1024 * 1024
    max_video_frames: int = 18_000  # 10 minutes at 30 frames a second
    video_decode_timeout: float = 30.0
    # The engine's context (set by the engine): a video whose tokens alone would not fit
    # is refused from its container's facts, before any frame is decoded.
    max_video_tokens: int | None = None


@dataclass(frozen=True, eq=False)
class ImageInput:
    """One preprocessed image. ``content_hash`` identifies its pixels: equal hashes give
    equal features (the prefix and embedding caches key on it)."""

    pixel_values: torch.Tensor  # [3, H, W], fp32, normalised
    content_hash: bytes


def image_input(pixel_values: torch.Tensor) -> ImageInput:
    data = pixel_values.contiguous().numpy().tobytes()
    return ImageInput(pixel_values, hashlib.blake2b(data, digest_size=16).digest())


def image_bytes(url: str, limits: ImageLimits) -> bytes:
    """The bytes behind an ``image_url``."""
    return media_bytes(url, "image", limits.max_bytes, limits)


def media_bytes(url: str, media: str, max_bytes: int, limits: ImageLimits) -> bytes:
    """The bytes behind an ``image_url`` or ``video_url`` (``media`` "image" or "video"):
    a data:, http(s) or (if allowed) file: URL, at most ``max_bytes``."""
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme == "data":
        return decode_data_url(url, media, max_bytes)
    if scheme in ("http", "https"):
        return fetch_http(url, max_bytes, limits.fetch_timeout, limits.url_policy, media)
    if scheme == "file":
        return read_local_file(url, limits.local_media_dir, max_bytes, media)
    raise InvalidRequestError(
        f"unsupported {media} URL {url[:40]!r}: expected a data: URL or an http(s) URL"
    )


# A data: URL's media type, as the errors show it.
EXAMPLE_TYPES = {"image": "image/png", "video": "video/mp4"}


def decode_data_url(url: str, media: str, max_bytes: int) -> bytes:
    """The bytes of a base64 ``data:`` URL of ``media`` ("image", "video")."""
    if not url.startswith("data:"):
        raise InvalidRequestError(f"unsupported {media} URL {url[:40]!r}: expected a data: URL")
    header, sep, payload = url[len("data:") :].partition(",")
    media_type, *params = header.split(";")
    if not sep or "base64" not in params:
        raise InvalidRequestError(
            f"{media} data: URLs must be base64 (data:{EXAMPLE_TYPES[media]};base64,...)"
        )
    if media_type and not media_type.startswith(f"{media}/"):
        raise InvalidRequestError(f"{media} data: URL has media type {media_type!r}, not {media}/*")
    if len(payload) * 3 // 4 > max_bytes:
        raise too_large(max_bytes, media)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"{with_article(media)} data: URL holds corrupt base64") from None


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """An RGB image (EXIF orientation applied, first frame of animations, transparency
    composited over white) from PNG, JPEG, WebP or GIF bytes."""
    if len(data) > limits.max_bytes:
        raise too_large(limits.max_bytes, "image")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InvalidRequestError(f"an image has more than {limits.max_pixels} pixels") from None
    except Image.UnidentifiedImageError:
        raise InvalidRequestError(
            "cannot decode an image: it is not a PNG, JPEG, WebP or GIF file"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidRequestError(
            f"cannot decode an image: its bytes are not valid ({e})"
        ) from None
    with image:
        if image.format not in FORMATS:
            raise InvalidRequestError(
                f"image format {image.format} is not supported; send PNG, JPEG, WebP or GIF"
            )
        check_size(image.width, image.height, limits.max_pixels)
        try:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise InvalidRequestError(
                f"cannot decode an image: its bytes are not valid ({e})"
            ) from None


def check_size(width: int, height: int, max_pixels: int, after: str = "") -> None:
    """Refuse an image of ``width`` x ``height`` (``after`` a resize or padding, if it
    says so) over ``max_pixels``, or one whose sides differ more than MAX_ASPECT_RATIO."""
    if width * height > max_pixels:
        raise InvalidRequestError(
            f"an image of {width}x{height}{after} has more than the limit of {max_pixels} "
            "pixels (--max-image-pixels)"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidRequestError(
            f"an image of {width}x{height} has sides more than {MAX_ASPECT_RATIO} times "
            "apart; crop it or send it in pieces"
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class ImageProcessor:
    """The model's preprocessing, read from ``preprocessor_config.json`` (CLIP's values
    where it is silent) and the config's ``image_aspect_ratio``."""

    def __init__(self, model_dir: Path, hf_config, limits: ImageLimits | None = None):
        self.limits = limits or ImageLimits()
        image_size = hf_config.vision_config.image_size
        path = model_dir / "preprocessor_config.json"
        try:
            pp = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path} is corrupt: {e}") from None
        self.mean = tuple(pp.get("image_mean", CLIP_MEAN))
        self.std = tuple(pp.get("image_std", CLIP_STD))
        size = pp.get("size", {"shortest_edge": image_size})
        size = {"height": size, "width": size} if isinstance(size, int) else size
        self.shortest_edge: int | None = size.get("shortest_edge")
        self.resize_to = (size.get("width", image_size), size.get("height", image_size))
        crop = pp.get("crop_size", image_size) if pp.get("do_center_crop", True) else None
        self.crop = (
            (crop, crop) if isinstance(crop, int) else crop and (crop["width"], crop["height"])
        )
        self.resample = Image.Resampling(pp.get("resample", Image.Resampling.BICUBIC))
        self.pad_to_square = (
            getattr(hf_config, "image_aspect_ratio", None) == "pad" or pp.get("do_pad") is True
        )
        if self.crop is None and self.shortest_edge is not None:
            raise ModelLoadError(f"{path} resizes by the shortest edge without a center crop")
        out = tuple(self.crop or self.resize_to)
        if out != (image_size, image_size):
            raise ModelLoadError(
                f"{path} makes {out[0]}x{out[1]} images; the vision tower takes {image_size}"
            )

    def load(self, url: str) -> ImageInput:
        """Decode and preprocess the image of an ``image_url`` part."""
        image = decode_image(image_bytes(url, self.limits), self.limits)
        return image_input(self.preprocess(image))

    def preprocess(self, image: Image.Image) -> torch.Tensor:  # [3, H, W]
        max_pixels = self.limits.max_pixels
        if self.pad_to_square:
            side = max(image.size)
            check_size(side, side, max_pixels, " padded to a square")
            image = _expand_to_square(image, tuple(int(m * 255) for m in self.mean))
        size = self._resized_size(*image.size)
        check_size(*size, max_pixels, " resized for the model")
        image = image.resize(size, self.resample)
        if self.crop is not None:
            left = (image.width - self.crop[0]) // 2
            top = (image.height - self.crop[1]) // 2
            image = image.crop((left, top, left + self.crop[0], top + self.crop[1]))
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = pixels.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return ((pixels - mean) / std).contiguous()

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        if self.shortest_edge is None:
            return self.resize_to
        short, long = sorted((width, height))
        new_long = int(self.shortest_edge * long / short)
        return (self.shortest_edge, new_long) if width <= height else (new_long, self.shortest_edge)


def _expand_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """LLaVA's ``expand2square``: centre the image on a square of the mean colour."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square
