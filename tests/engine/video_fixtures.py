"""Small videos made in the test with PyAV: H.264 with B-frames and a keyframe every
``gop`` frames (MPEG-4 Part 2 where the wheel's FFmpeg lacks libx264), every frame
different, and the reference decode: every frame, in order."""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import av
import numpy as np


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
