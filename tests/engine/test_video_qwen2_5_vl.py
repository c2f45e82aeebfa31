"""Qwen2.5-VL with videos: frames sampled, cut and positioned as transformers does it,
and logits and greedy tokens equal to transformers' Qwen2_5_VLForConditionalGeneration
fed the same patches (fp32, tiny random model).

transformers' video processor imports torchvision, which we do not install: its
``sample_frames`` (with ``fps``) is written out below from its code (transformers 5.24,
models/qwen2_vl/video_processing_qwen2_vl.py), its ``patchify`` in video_fixtures.py,
and the ``second_per_grid_ts`` rule from Qwen2_5_VLProcessor._process_videos."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine import LLM, InvalidRequestError, SamplingParams
from engine.multimodal.qwen_video import QwenVideoInput
from engine.multimodal.video import VideoInfo
from tests.engine.qwen2_5_vl_fixtures import build_tiny_qwen2_5_vl, load_qwen2_5_vl_reference
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

# 4 s at 10 fps: 2 frames a second sample 8 frames (4 temporal patches); 112x84 frames
# are 4 x 3 tokens, whose temporal positions (4 apart at 4 tokens a second) outrun them.
VIDEO = make_video(num_frames=40, width=112, height=84, fps=10, gop=8)
GREEDY = SamplingParams(max_tokens=NUM_DECODE, temperature=0, ignore_eos=True)
CONVERSATIONS = video_conversations(VIDEO, image_url(random_image(1, (97, 233))))


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen2_5_vl_video"))


@pytest.fixture(scope="module")
def reference(qwen_dir):
    return load_qwen2_5_vl_reference(qwen_dir)


@pytest.fixture(scope="module")
def llm(qwen_dir) -> LLM:
    return LLM(str(qwen_dir), kv_cache_memory=0.01, max_num_batched_tokens=40, max_num_seqs=4)


def their_sample_frames(info: VideoInfo, fps: float, min_frames=4, max_frames=768, t=2):
    """Qwen2VLVideoProcessor.sample_frames with ``fps``, written out."""
    total = info.num_frames
    max_frames = math.floor(min(max_frames, total) / t) * t
    num_frames = total / info.fps * fps
    num_frames = min(max(num_frames, min_frames), max_frames, total)
    num_frames = math.floor(num_frames / t) * t
    return torch.arange(0, total, total / num_frames).int()


def test_sampling_as_transformers(llm):
    videos = llm.engine.vision.videos
    for info in (
        VideoInfo(40, 10.0, 112, 84),
        VideoInfo(301, 29.97, 640, 360),
        VideoInfo(7, 30.0, 64, 64),  # shorter than min_frames: 6 frames
        VideoInfo(100_000, 30.0, 64, 64),  # capped at max_frames
    ):
        assert videos.sample(info) == their_sample_frames(info, 2.0).tolist()
    with pytest.raises(InvalidRequestError, match="at least 2 frames"):
        videos.sample(VideoInfo(1, 30.0, 64, 64))


def test_patches_and_seconds_as_transformers(llm):
    [video] = llm.engine.vision.videos.load(data_url(VIDEO)).inputs
    assert isinstance(video, QwenVideoInput)
    indices = their_sample_frames(VideoInfo(40, 10.0, 112, 84), 2.0)
    frames = np.stack(decode_all(VIDEO))[indices.numpy()]  # no resize: 112x84 is 28 px tokens
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]) * 255.0
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]) * 255.0
    pixels = (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    theirs, grid = their_patchify(pixels[None])
    assert grid == (4, 6, 8)
    assert tuple(video.pixel_values.shape) == (4, 3, 4, 4, 3 * 2 * 14 * 14)
    assert torch.equal(video.pixel_values.flatten(0, 3), theirs[0])
    # temporal_patch_size / sampled fps, sampled fps = 8 frames of 40 at 10 fps
    assert video.seconds_per_grid == 2 / (8 / 40 * 10)


def test_resize_matches_the_bound_the_processor_takes(llm):
    """A frame size that is no multiple of 28 px is resized as smart_resize says."""
    videos = llm.engine.vision.videos
    data = make_video(num_frames=8, width=90, height=50, fps=4)
    [video] = videos.load(data_url(data)).inputs
    # smart_resize(50, 90, 28, 3136, 50176) = (56, 84): 2 x 3 tokens; 2 s at 2 frames a
    # second is 4 frames, 2 temporal patches
    assert videos.resized_size(90, 50, 4) == (84, 56)
    assert tuple(video.pixel_values.shape[:3]) == (2, 2, 3)


def reference_inputs(reference, token_ids, media) -> dict:
    input_ids = torch.tensor([token_ids])
    config = reference.config
    kinds = torch.zeros_like(input_ids)
    kinds[input_ids == config.image_token_id] = 1
    kinds[input_ids == config.video_token_id] = 2
    inputs = dict(input_ids=input_ids, mm_token_type_ids=kinds)
    images = [m for m in media if not isinstance(m, QwenVideoInput)]
    videos = [m for m in media if isinstance(m, QwenVideoInput)]
    grid = lambda m: [m.pixel_values.shape[0], *(2 * s for s in m.pixel_values.shape[1:3])]  # noqa: E731
    if images:
        inputs["pixel_values"] = torch.cat([m.pixel_values.flatten(0, 3) for m in images])
        inputs["image_grid_thw"] = torch.tensor([grid(m) for m in images])
    if videos:
        inputs["pixel_values_videos"] = torch.cat([m.pixel_values.flatten(0, 3) for m in videos])
        inputs["video_grid_thw"] = torch.tensor([grid(m) for m in videos])
        inputs["second_per_grid_ts"] = torch.tensor([m.seconds_per_grid for m in videos])
    return inputs


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_logits_and_greedy_tokens_match_transformers(llm, reference, name):
    """Against transformers' generate: the prompt's logits and each decode step's. Here
    the video's last temporal patch (p + 6) outruns the text after it (p + max(h, w) =
    p + 4): the answer goes on from the prompt's last position, as generate's does."""
    engine = llm.engine
    token_ids, media = engine.chat_request(CONVERSATIONS[name])
    video_token = reference.config.video_token_id
    assert token_ids.count(video_token) == 4 * 3 * 4
    inputs = reference_inputs(reference, token_ids, media)
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
    # The prompt in chunks that split the video's tokens (and, here, its temporal patches).
    first_video = token_ids.index(video_token)
    for chunk in (1000, first_video + 7):
        ours, tokens = our_logits(engine, token_ids, media, chunk)
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        assert tokens == tokens_theirs
    assert llm.chat(CONVERSATIONS[name], GREEDY).token_ids == tokens_theirs


def test_the_same_video_is_encoded_once(llm):
    engine = llm.engine
    cache = engine.core.runner.image_cache
    llm.chat(CONVERSATIONS["video"], GREEDY)
    misses = cache.num_misses
    llm.chat(CONVERSATIONS["video"], GREEDY)
    assert cache.num_misses == misses


def test_videos_sampled_otherwise_are_other_videos(llm):
    """The cache keys on the file and its sampling: a cut of the same file differs."""
    engine = llm.engine
    _, [whole] = engine.chat_request(CONVERSATIONS["video"])
    shorter = make_video(num_frames=20, width=112, height=84, fps=10, gop=8)
    messages = [{"role": "user", "content": [text_part("What happens?"), video_part(shorter)]}]
    _, [cut] = engine.chat_request(messages)
    assert whole.content_hash != cut.content_hash


def test_bad_videos_are_400s_naming_the_part(llm):
    engine = llm.engine
    truncated = [{"role": "user", "content": [text_part("Hi"), video_part(VIDEO[:2000])]}]
    with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content\[1\]: cannot decode"):
        engine.chat_request(truncated)


def video_then_text(data: bytes) -> list[dict]:
    return [
        {"role": "system", "content": "You watch videos."},
        {"role": "user", "content": [video_part(data), text_part("What happens here, then?")]},
    ]


def test_the_prefix_cache_keys_on_the_video(qwen_dir):
    """Two videos of the same size and length make the same tokens: only the blocks
    before the video are shared, and the answer is a fresh engine's. The same video
    again is a hit past it."""
    llm = LLM(str(qwen_dir), kv_cache_memory=0.01)
    engine = llm.engine
    block_size = engine.config.block_size
    other = make_video(num_frames=40, width=112, height=84, fps=10, gop=8, seed=1)
    first, second = video_then_text(VIDEO), video_then_text(other)
    token_ids = engine.chat_request(first)[0]
    assert token_ids == engine.chat_request(second)[0]
    first_video = token_ids.index(engine.vision.video_token_id)
    llm.chat(first, GREEDY)
    hits = engine.stats().num_prefix_hit_tokens
    output = llm.chat(second, GREEDY)
    assert engine.stats().num_prefix_hit_tokens - hits == first_video // block_size * block_size
    assert (
        output.token_ids == LLM(str(qwen_dir), kv_cache_memory=0.01).chat(second, GREEDY).token_ids
    )
    hits = engine.stats().num_prefix_hit_tokens
    llm.chat(first, GREEDY)
    assert engine.stats().num_prefix_hit_tokens - hits == len(token_ids) // block_size * block_size


def test_a_video_longer_than_the_context_is_refused_before_decoding(qwen_dir, monkeypatch):
    """48 tokens (4 temporal patches of 4 x 3) cannot fit a 40-token context: refused
    from the container's facts, no frame decoded."""
    llm = LLM(str(qwen_dir), kv_cache_memory=0.01, max_model_len=40)
    forbid_decoding(monkeypatch)
    with pytest.raises(InvalidRequestError, match="takes 48 tokens, more than the context of 40"):
        llm.engine.chat_request(CONVERSATIONS["video"])
