"""Qwen3-VL with videos: frames sampled, resized, cut and stamped as transformers does it;
the prompt's token ids (timestamps included) equal to transformers' Qwen3VLProcessor's,
its M-RoPE positions to get_rope_index's, and logits and greedy tokens to transformers'
Qwen3VLForConditionalGeneration fed the same patches (fp32, tiny random model).

transformers' Qwen3VLVideoProcessor imports torchvision, which we do not install: its
``sample_frames`` and ``smart_resize`` are written out below from its code (transformers
5.24, models/qwen3_vl/video_processing_qwen3_vl.py; its ``patchify`` is Qwen2-VL's,
written out in video_fixtures.py), and stand in for it inside transformers' own
Qwen3VLProcessor, which writes the timestamps and tokenizes the prompt."""

from __future__ import annotations

import io
import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BatchFeature
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from engine import LLM, InvalidRequestError, SamplingParams
from engine.multimodal.qwen3_video import Qwen3VideoInput
from engine.multimodal.qwen_video import QwenVideoInput
from engine.multimodal.video import VideoInfo
from tests.engine.qwen3_vl_fixtures import (
    PREPROCESSOR,
    VIDEO_PREPROCESSOR,
    build_tiny_qwen3_vl,
    load_qwen3_vl_reference,
)
from tests.engine.test_qwen2_5_vl import NUM_DECODE, our_logits
from tests.engine.video_fixtures import (
    data_url,
    decode_all,
    forbid_decoding,
    make_video,
    their_patchify,
    video_conversations,
    video_part,
)
from tests.engine.vlm_fixtures import data_url as image_url
from tests.engine.vlm_fixtures import random_image, text_part

# 3.5 s at 10 fps: 2 frames a second sample 7 frames, so the last of 4 temporal patches
# repeats its last frame; 128x96 frames are 4 x 3 tokens of 32 px, and the clip's 8
# frames of them fit the video bounds as they are (no resize).
VIDEO = make_video(num_frames=35, width=128, height=96, fps=10, gop=8)
IMAGE = random_image(1, (97, 150))
GREEDY = SamplingParams(max_tokens=NUM_DECODE, temperature=0, ignore_eos=True)
CONVERSATIONS = video_conversations(VIDEO, image_url(IMAGE))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("qwen3_vl_video"))


@pytest.fixture(scope="module")
def reference(qwen_dir):
    return load_qwen3_vl_reference(qwen_dir)


@pytest.fixture(scope="module")
def llm(qwen_dir) -> LLM:
    return LLM(str(qwen_dir), kv_cache_memory=0.01, max_num_batched_tokens=64, max_num_seqs=4)


def their_sample_frames(metadata: VideoMetadata, fps=2, min_frames=4, max_frames=768):
    """Qwen3VLVideoProcessor.sample_frames with ``fps``, written out."""
    total = metadata.total_num_frames
    num_frames = int(total / metadata.fps * fps)
    num_frames = min(max(num_frames, min_frames), max_frames, total)
    return np.linspace(0, total - 1, num_frames).round().astype(int)


def their_smart_resize(num_frames, height, width, temporal_factor, factor, min_pixels, max_pixels):
    """video_processing_qwen3_vl.smart_resize, written out."""
    if num_frames < temporal_factor:
        raise ValueError(f"t:{num_frames} must be larger than temporal_factor:{temporal_factor}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height = int(height * scale)
        width = int(width * scale)
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((num_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def their_max_pixels(num_frames, size, factor, cap_pixels_per_frame, max_video_tokens=768):
    """Qwen3VLVideoProcessor.resize's pixel bound for the clip, written out."""
    if not cap_pixels_per_frame:
        return size["longest_edge"]
    frame_cap = max_video_tokens * factor * factor
    per_frame = max(
        min(frame_cap, size["longest_edge"] // num_frames), int(size["shortest_edge"] * 1.05)
    )
    return per_frame * num_frames


def read_metadata(data: bytes) -> VideoMetadata:
    """The metadata transformers' PyAV reader (video_utils.read_video_pyav) takes."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return VideoMetadata(
            total_num_frames=stream.frames,
            fps=float(stream.average_rate),
            width=stream.width,
            height=stream.height,
        )


class HandBuiltVideoProcessor(BaseVideoProcessor):
    """Qwen3VLVideoProcessor's work on frames that need no resize, from the code written
    out above: what transformers' Qwen3VLProcessor gets from its video processor."""

    patch_size, merge_size, temporal_patch_size = 16, 2, 2

    def __call__(self, videos, video_metadata, **kwargs) -> BatchFeature:
        pixels, grids, metadata = [], [], []
        mean = torch.tensor(VIDEO_PREPROCESSOR["image_mean"]).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(VIDEO_PREPROCESSOR["image_std"]).view(1, 3, 1, 1) * 255.0
        for frames, info in zip(videos, video_metadata):
            indices = their_sample_frames(info)
            height, width = frames.shape[1:3]
            size = VIDEO_PREPROCESSOR["size"]
            bounds = (size["shortest_edge"], size["longest_edge"])
            assert their_smart_resize(len(indices), height, width, 2, 32, *bounds) == (
                height,
                width,
            ), "a frame size the hand-built processor cannot take (no torchvision resize)"
            video = torch.from_numpy(frames[indices]).permute(0, 3, 1, 2).float()
            flat, grid = their_patchify(((video - mean) / std)[None], 16, 2, 2)
            pixels.append(flat[0])
            grids.append(list(grid))
            info.frames_indices = indices
            metadata.append(info)
        return BatchFeature(
            {
                "pixel_values_videos": torch.cat(pixels),
                "video_grid_thw": torch.tensor(grids),
                "video_metadata": metadata,
            }
        )


@pytest.fixture(scope="module")
def processor(qwen_dir) -> Qwen3VLProcessor:
    """transformers' Qwen3VLProcessor around the hand-built video processor, which is
    no VideoProcessorMixin (that class needs torchvision): its class check is skipped
    for that argument alone."""
    check = ProcessorMixin.check_argument_for_proper_class

    def check_but_the_video_processor(self, name, argument):
        return None if name == "video_processor" else check(self, name, argument)

    pil_config = {k: v for k, v in PREPROCESSOR.items() if k != "image_processor_type"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            ProcessorMixin, "check_argument_for_proper_class", check_but_the_video_processor
        )
        return Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessorPil(**pil_config),
            tokenizer=AutoTokenizer.from_pretrained(qwen_dir),
            video_processor=HandBuiltVideoProcessor(),
        )


def their_inputs(processor: Qwen3VLProcessor, name: str) -> BatchFeature:
    """transformers' Qwen3VLProcessor on the conversation: the template rendered as the
    Hub's processor renders it, the video's frames and metadata as its PyAV reader gives
    them."""
    tokenizer = processor.tokenizer
    messages, images = [], []
    for message in CONVERSATIONS[name]:
        parts = []
        for part in message["content"]:
            kind = part["type"]
            parts.append(part if kind == "text" else {"type": kind.removesuffix("_url")})
            if kind == "image_url":
                images.append(IMAGE)
        messages.append({**message, "content": parts})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(
        text=[text],
        images=images or None,
        videos=[np.stack(decode_all(VIDEO))],
        video_metadata=[read_metadata(VIDEO)],
        return_tensors="pt",
    )


def test_sampling_as_transformers(llm):
    videos = llm.engine.vision.videos
    for info in (
        VideoInfo(35, 10.0, 128, 96),
        VideoInfo(301, 29.97, 640, 360),
        VideoInfo(3, 30.0, 64, 64),  # shorter than min_frames: every frame
        VideoInfo(100_000, 30.0, 64, 64),  # capped at max_frames
    ):
        metadata = VideoMetadata(total_num_frames=info.num_frames, fps=info.fps)
        assert videos.sample(info) == their_sample_frames(metadata).tolist()
    with pytest.raises(InvalidRequestError, match="at least 2 frames"):
        videos.sample(VideoInfo(1, 30.0, 64, 64))


@pytest.mark.parametrize("cap", [False, True], ids=["uncapped", "cap_pixels_per_frame"])
def test_resize_as_transformers(llm, cap):
    """Frame sizes above, within and below the clip's bounds (and below one token)."""
    videos = llm.engine.vision.videos
    size = VIDEO_PREPROCESSOR["size"]
    # Capped, the default 768 tokens a frame never binds this tiny model's bound.
    videos.cap_pixels_per_frame = cap
    try:
        for num_frames, width, height in [
            (7, 128, 96),
            (8, 640, 360),
            (64, 640, 360),
            (4, 20, 500),
            (2, 90, 50),
            (3, 10, 10),
        ]:
            max_pixels = their_max_pixels(num_frames, size, 32, cap)
            theirs = their_smart_resize(
                num_frames, height, width, 2, 32, size["shortest_edge"], max_pixels
            )
            assert videos.resized_size(width, height, num_frames) == theirs[::-1]
    finally:
        videos.cap_pixels_per_frame = False


def test_a_video_resized_to_the_bounds(llm):
    """640x360 frames are scaled so the 8 frames sampled hold at most 256 tokens: 4 x 7
    tokens each (224 in all)."""
    data = make_video(num_frames=40, width=640, height=360, fps=10, gop=8)
    [video] = llm.engine.vision.videos.load(data_url(data)).inputs
    height, width = their_smart_resize(8, 360, 640, 2, 32, 4096, 32 * 32 * 256)
    assert (height, width) == (128, 224)
    assert tuple(video.pixel_values.shape[:3]) == (4, height // 32, width // 32)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_prompt_and_patches_as_transformers_processor(llm, processor, name):
    token_ids, media = llm.engine.chat_request(CONVERSATIONS[name])
    theirs = their_inputs(processor, name)
    assert token_ids == theirs.input_ids[0].tolist()
    [video] = [m for m in media if isinstance(m, Qwen3VideoInput)]
    assert torch.equal(video.pixel_values.flatten(0, 3), theirs.pixel_values_videos)
    assert [video.pixel_values.shape[0], *(2 * s for s in video.pixel_values.shape[1:3])] == (
        theirs.video_grid_thw[0].tolist()
    )
    # 4 temporal patches of 4 x 3 tokens, each after its timestamp
    assert token_ids.count(llm.engine.vision.video_token_id) == 4 * 12


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_mrope_positions_as_transformers(llm, processor, reference, name):
    prompt = llm.engine.inputs.prepare_chat(CONVERSATIONS[name])
    theirs = their_inputs(processor, name)
    positions, deltas = reference.model.get_rope_index(
        theirs.input_ids,
        theirs.mm_token_type_ids,
        theirs.get("image_grid_thw"),
        theirs.video_grid_thw,
    )
    np.testing.assert_array_equal(prompt.mrope.positions, positions[:, 0].numpy())
    # generate goes on from the last position; rope_deltas is one past the largest
    assert prompt.mrope.delta == positions[:, 0].max().item() + 1 - len(prompt.token_ids)


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_logits_and_greedy_tokens_match_transformers(llm, processor, reference, name):
    """Against transformers' generate on its processor's inputs: the prompt's logits and
    each decode step's, the prompt whole and in chunks that end inside a temporal patch."""
    engine = llm.engine
    token_ids, media = engine.chat_request(CONVERSATIONS[name])
    inputs = their_inputs(processor, name)
    with torch.no_grad():
        out = reference.generate(
            **inputs,
            max_new_tokens=NUM_DECODE + 1,
            min_new_tokens=NUM_DECODE + 1,
            do_sample=False,
            return_dict_in_generate=True,
            output_logits=True,
        )
    tokens_theirs = out.sequences[0, len(token_ids) : len(token_ids) + NUM_DECODE].tolist()
    theirs = torch.cat(out.logits)  # [NUM_DECODE + 1, vocab]
    first_video = token_ids.index(engine.vision.video_token_id)
    for chunk in (1000, first_video + 5):
        ours, tokens = our_logits(engine, token_ids, media, chunk)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        assert tokens == tokens_theirs
    assert llm.chat(CONVERSATIONS[name], GREEDY).token_ids == tokens_theirs


def test_the_same_video_is_encoded_once_and_keys_the_prefix_cache(qwen_dir, llm):
    """The feature cache keys on the file and its sampling; two videos of one size and
    length make the same tokens, yet share only the blocks before the video. The answer
    is the module's engine's, which never saw a prompt that begins with a video."""
    fresh = LLM(str(qwen_dir), kv_cache_memory=0.01)
    engine = fresh.engine
    cache = engine.core.runner.image_cache
    block_size = engine.config.block_size
    other = make_video(num_frames=35, width=128, height=96, fps=10, gop=8, seed=1)
    first = [{"role": "user", "content": [video_part(VIDEO), text_part("And then?")]}]
    second = [{"role": "user", "content": [video_part(other), text_part("And then?")]}]
    token_ids = engine.chat_request(first)[0]
    assert token_ids == engine.chat_request(second)[0]
    first_video = token_ids.index(engine.vision.video_token_id)
    fresh.chat(first, GREEDY)
    misses, hits = cache.num_misses, engine.stats().num_prefix_hit_tokens
    output = fresh.chat(second, GREEDY)
    assert cache.num_misses == misses + 1
    assert engine.stats().num_prefix_hit_tokens - hits == first_video // block_size * block_size
    assert output.token_ids == llm.chat(second, GREEDY).token_ids
    misses, hits = cache.num_misses, engine.stats().num_prefix_hit_tokens
    fresh.chat(first, GREEDY)
    assert cache.num_misses == misses
    assert engine.stats().num_prefix_hit_tokens - hits == len(token_ids) // block_size * block_size


def test_a_qwen2_5_vl_video_is_refused(llm):
    """Its one run of tokens without timestamps is not a prompt Qwen3-VL takes."""
    [video] = llm.engine.vision.videos.load(data_url(VIDEO)).inputs
    other = QwenVideoInput(video.pixel_values, video.content_hash, video.seconds_per_grid)
    token_ids = llm.engine.tokenizer("<|vision_start|><|video_pad|><|vision_end|>").input_ids
    with pytest.raises(InvalidRequestError, match="a video prepared for another model"):
        llm.engine.inputs.prepare(token_ids, [other])


def test_a_video_longer_than_the_context_is_refused_before_decoding(qwen_dir, monkeypatch):
    """48 video tokens (4 temporal patches of 4 x 3) cannot fit a 40-token context:
    refused from the container's facts, no frame decoded."""
    llm = LLM(str(qwen_dir), kv_cache_memory=0.01, max_model_len=40)
    forbid_decoding(monkeypatch)
    with pytest.raises(InvalidRequestError, match="takes 48 tokens, more than the context of 40"):
        llm.engine.chat_request(CONVERSATIONS["video"])


def test_a_truncated_video_is_a_400_naming_the_part(llm):
    truncated = [{"role": "user", "content": [text_part("Hi"), video_part(VIDEO[:2000])]}]
    with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content\[1\]: cannot decode"):
        llm.engine.chat_request(truncated)
