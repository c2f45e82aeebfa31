"""The frame API (engine/multimodal/video.py): sampled frames equal a decode of every
frame picking the same indices; limits refuse before decoding; bad bytes are 400s."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.errors import InvalidRequestError
from engine.multimodal.images import ImageLimits
from engine.multimodal.video import VideoInfo, decode_frames, video_bytes
from tests.engine.video_fixtures import data_url, decode_all, make_video

LIMITS = ImageLimits()


@pytest.fixture(scope="module")
def video() -> bytes:
    return make_video(num_frames=20, gop=4)


@pytest.mark.parametrize(
    "indices",
    [
        [0],
        [19],  # the last frame alone: decoding starts at its keyframe
        [0, 5, 10, 15],
        [3, 3, 7, 18],  # repeats, and frames between keyframes
        [18, 2, 9],  # out of order: returned in the order asked
        list(range(20)),
    ],
)
def test_sampled_frames_equal_a_full_decode(video: bytes, indices: list[int]) -> None:
    reference = decode_all(video)
    info, frames = decode_frames(video, lambda info: indices, LIMITS)
    assert info == VideoInfo(num_frames=20, fps=10.0, width=64, height=48)
    assert len(reference) == 20
    assert len(frames) == len(indices)
    for index, frame in zip(indices, frames):
        assert frame.dtype == np.uint8 and frame.shape == (48, 64, 3)
        np.testing.assert_array_equal(frame, reference[index])


def test_all_frames_differ(video: bytes) -> None:
    """The fixture can tell a wrong frame from the right one."""
    reference = decode_all(video)
    assert all(not np.array_equal(a, b) for a, b in zip(reference, reference[1:]))


def test_a_sampler_sees_the_info_before_decoding(video: bytes) -> None:
    seen = []

    def sample(info: VideoInfo) -> list[int]:
        seen.append(info)
        return [info.num_frames - 1]

    decode_frames(video, sample, LIMITS)
    assert seen == [VideoInfo(20, 10.0, 64, 48)]


def test_indices_out_of_range_are_refused(video: bytes) -> None:
    with pytest.raises(InvalidRequestError, match="cannot be sampled"):
        decode_frames(video, lambda info: [20], LIMITS)


def test_a_video_over_max_frames_is_refused_before_sampling(video: bytes) -> None:
    limits = dataclasses.replace(LIMITS, max_video_frames=19)

    def sample(info: VideoInfo) -> list[int]:
        raise AssertionError("sampled a video over the frame limit")

    with pytest.raises(InvalidRequestError, match="max-video-frames"):
        decode_frames(video, sample, limits)


def test_a_video_over_max_bytes_is_refused(video: bytes) -> None:
    limits = dataclasses.replace(LIMITS, max_video_bytes=len(video) - 1)
    with pytest.raises(InvalidRequestError, match="max-video-bytes"):
        decode_frames(video, lambda info: [0], limits)
    with pytest.raises(InvalidRequestError, match="max-video-bytes"):
        video_bytes(data_url(video), limits)


def test_frames_over_max_pixels_are_refused(video: bytes) -> None:
    limits = dataclasses.replace(LIMITS, max_pixels=64 * 48 - 1)
    with pytest.raises(InvalidRequestError, match="pixels"):
        decode_frames(video, lambda info: [0], limits)


@pytest.mark.parametrize("faststart", [False, True])
@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_videos_are_refused(faststart: bool, cut: float) -> None:
    data = make_video(faststart=faststart)
    with pytest.raises(InvalidRequestError, match="cannot decode a video"):
        decode_frames(data[: int(len(data) * cut)], lambda info: [info.num_frames - 1], LIMITS)


def test_bytes_that_are_no_video_are_refused() -> None:
    with pytest.raises(InvalidRequestError, match="cannot decode a video"):
        decode_frames(b"\x00\x01not a video at all" * 50, lambda info: [0], LIMITS)


def test_data_urls() -> None:
    assert video_bytes(data_url(b"abc"), LIMITS) == b"abc"
    with pytest.raises(InvalidRequestError, match="not video"):
        video_bytes("data:image/png;base64,YWJj", LIMITS)
    with pytest.raises(InvalidRequestError, match="corrupt base64"):
        video_bytes("data:video/mp4;base64,@@@", LIMITS)
    with pytest.raises(InvalidRequestError, match="file: video URLs are refused"):
        video_bytes("file:///tmp/a.mp4", LIMITS)
