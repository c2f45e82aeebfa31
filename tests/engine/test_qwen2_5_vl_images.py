"""Qwen2.5-VL's image preprocessing against transformers' PIL processor for Qwen2-VL
(``Qwen2VLImageProcessorPil``, the slow path; transformers' default torch processor
resizes through torchvision), bit for bit: sizes that need resizing, both spellings of
the pixel bounds, EXIF rotation and non-RGB modes decoded by the shared image rules."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageOps
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from engine.errors import ModelLoadError
from engine.multimodal.qwen_images import QwenImageProcessor
from tests.engine.vlm_fixtures import data_url, random_image

HF_CONFIG = SimpleNamespace(
    vision_config=SimpleNamespace(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
)
SPELLINGS = {
    "min_max_pixels": dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 40),
    "size_edges": dict(size=dict(shortest_edge=28 * 28 * 4, longest_edge=28 * 28 * 40)),
}


def processors(tmp_path, **pp) -> tuple[QwenImageProcessor, Qwen2VLImageProcessorPil]:
    pp = dict(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], **pp)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pp))
    return QwenImageProcessor(tmp_path, HF_CONFIG), Qwen2VLImageProcessorPil(**pp)


def reference_pixels(reference, url: str) -> tuple[torch.Tensor, list[int]]:
    """transformers on the image as the shared decoder reads it: EXIF rotation applied
    and transparency over white, composited here by PIL. transformers' own conversion
    does that from some 5.x on (5.24 does), but 5.17's drops the alpha and keeps the
    colours under it, and pyproject admits any 5.x."""
    data = base64.b64decode(url.partition(",")[2])
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    if image.mode != "RGB":
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    out = reference(images=[image], return_tensors="pt")
    return out.pixel_values, out.image_grid_thw[0].tolist()


def assert_same(ours: QwenImageProcessor, reference, url: str) -> list[int]:
    pixels = ours.load(url).pixel_values
    theirs, grid = reference_pixels(reference, url)
    assert pixels.dtype == torch.float32
    assert list(pixels.shape[:3]) == [grid[0], grid[1] // 2, grid[2] // 2]
    assert torch.equal(pixels.flatten(0, 3), theirs)
    return grid


@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.parametrize("size", [(97, 233), (200, 150), (30, 20), (300, 290)])
def test_pixel_values_match_transformers(tmp_path, spelling, size):
    ours, reference = processors(tmp_path, **SPELLINGS[spelling])
    grid = assert_same(ours, reference, data_url(random_image(size[0], size)))
    assert 4 <= grid[1] * grid[2] // 4 <= 40  # within the bounds, in 28 px tokens


def test_defaults_when_the_config_is_silent(tmp_path):
    ours, reference = processors(tmp_path)
    assert (ours.min_pixels, ours.max_pixels) == (56 * 56, 28 * 28 * 1280)
    assert_same(ours, reference, data_url(random_image(5, (97, 233))))


def test_exif_rotation_is_applied(tmp_path):
    ours, reference = processors(tmp_path, **SPELLINGS["min_max_pixels"])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    url = data_url(random_image(3, (97, 233)), "JPEG", exif=exif.tobytes())
    grid = assert_same(ours, reference, url)
    assert grid[1] < grid[2]  # 97 wide, 233 high, turned on its side


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_non_rgb_modes(tmp_path, mode):
    ours, reference = processors(tmp_path, **SPELLINGS["min_max_pixels"])
    if mode == "P":
        image = random_image(4, (200, 150)).convert("P")
        url = data_url(image, "PNG", transparency=0)
    else:
        url = data_url(random_image(4, (200, 150), mode=mode))
    assert_same(ours, reference, url)


def test_inverted_bounds_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="not a range"):
        processors(tmp_path, min_pixels=28 * 28 * 40, max_pixels=28 * 28 * 4)


def test_a_config_that_skips_a_step_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="turns off do_normalize"):
        processors(tmp_path, do_normalize=False)


@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.parametrize(
    "bounds", [(28 * 28 * 16, 28 * 28 * 24), (None, 28 * 28 * 8), (28 * 28 * 30, None)]
)
def test_server_bounds_override_the_config(tmp_path, spelling, bounds):
    """Bounds given to the processor (a server's --min-pixels/--max-pixels) replace the
    config's, either spelling, one or both: the pixels transformers' processor makes
    with those bounds."""
    pp = dict(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], **SPELLINGS[spelling])
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pp))
    ours = QwenImageProcessor(tmp_path, HF_CONFIG, None, *bounds)
    low, high = bounds
    low = low or 28 * 28 * 4
    high = high or 28 * 28 * 40
    reference_pp = {k: v for k, v in pp.items() if k != "size"}
    reference = Qwen2VLImageProcessorPil(**dict(reference_pp, min_pixels=low, max_pixels=high))
    assert (ours.min_pixels, ours.max_pixels) == (low, high)
    for size in ((97, 233), (200, 150), (300, 290)):
        grid = assert_same(ours, reference, data_url(random_image(size[0], size)))
        assert low <= grid[1] * grid[2] * 14 * 14 <= high
