"""Small videos made in the test with PyAV: H.264 with B-frames and a keyframe every
``gop`` frames (MPEG-4 Part 2 where the wheel's FFmpeg lacks libx264), every frame
different, and the reference decode: every frame, in order. Also what the video tests
share: chat parts and conversations with a video, a guard that no frame is decoded, and
the Qwen-VL video processors' ``patchify`` written out."""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.engine.vlm_fixtures import image_part, text_part


def make_video(
    num_frames: int = 20,
    width: int = 64,
    height: int = 48,
    fps: int = 10,
    gop: int = 4,
    faststart: bool = False,
    seed: int = 0,
) -> bytes:
    """An mp4 whose frame ``i`` has a bar at column ``3 i`` on a background that ramps in
    time, so frames are told apart. ``faststart``: the index before the frames (a cut
    file then loses frames, not its index). ``seed``: the background's noise."""
    if faststart:  # the muxer moves the index by rereading what it wrote: a real file
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "video.mp4"
            _write(str(path), num_frames, width, height, fps, gop, {"movflags": "faststart"}, seed)
            return path.read_bytes()
    out = io.BytesIO()
    _write(out, num_frames, width, height, fps, gop, {}, seed)
    return out.getvalue()


def _write(
    out, num_frames: int, width: int, height: int, fps: int, gop: int, options, seed: int
) -> None:
    with av.open(out, mode="w", format="mp4", options=options) as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "bf": "2"}
        rng = np.random.default_rng(seed)
        noise = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
        for i in range(num_frames):
            pixels = noise.copy()
            pixels[..., 0] += np.uint8(i * 200 // max(num_frames - 1, 1))
            pixels[:, (i * 3) % width : (i * 3) % width + 4, 1] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decode_all(data: bytes) -> list[np.ndarray]:
    """Every frame, decoded in order (what transformers' ``read_video_pyav`` does)."""
    with av.open(io.BytesIO(data)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def data_url(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def video_part(data: bytes) -> dict:
    return {"type": "video_url", "video_url": {"url": data_url(data)}}


def video_conversations(video: bytes, image_url: str) -> dict[str, list[dict]]:
    """The Qwen-VL video tests' chats, by name: a question before ``video``; an image,
    ``video``, then a question."""
    return {
        "video": [{"role": "user", "content": [text_part("What happens?"), video_part(video)]}],
        "image-video-text": [
            {
                "role": "user",
                "content": [
                    image_part(image_url),
                    video_part(video),
                    text_part("Which came first?"),
                ],
            }
        ],
    }


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test at the first frame decoded: for videos that must be refused from
    their container's facts alone."""

    def decode(*args):
        raise AssertionError("decoded a video the context cannot hold")

    monkeypatch.setattr("engine.multimodal.video._decode_at", decode)


def their_patchify(videos: torch.Tensor, patch_size=14, merge_size=2, temporal_patch_size=2):
    """Qwen2VLVideoProcessor.patchify (transformers 5.24,
    models/qwen2_vl/video_processing_qwen2_vl.py; Qwen3-VL's is the same), written out:
    ``[b, n, c, h, w]`` -> flat patches."""
    batch_size, num_frames, channel, height, width = videos.shape
    if pad := -num_frames % temporal_patch_size:
        videos = torch.cat((videos, videos[:, -1:].expand(-1, pad, -1, -1, -1)), dim=1)
        num_frames += pad
    grid_t = num_frames // temporal_patch_size
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = videos.view(
        batch_size,
        grid_t,
        temporal_patch_size,
        channel,
        grid_h // merge_size,
        merge_size,
        patch_size,
        grid_w // merge_size,
        merge_size,
        patch_size,
    )
    patches = patches.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    flat = patches.reshape(batch_size, grid_t * grid_h * grid_w, -1)
    return flat, (grid_t, grid_h, grid_w)
