"""Decoding only the sampled frames (engine/multimodal/video.py) against decoding every
frame and picking the same ones (transformers' ``read_video_pyav``), on a camera-like
H.264 clip made here: 30 frames a second, a keyframe every 2 s, B-frames.

Samplings: VILA1.5's 8 frames (uniform), Qwen2.5-VL's (2 a second, so 2 frames of every
keyframe interval's 60), and the first 8 frames. The frames are checked equal to the
full decode's; the figures are the fastest of ``--repeats`` (a shared machine only ever
slows a run down), in milliseconds, and the ratio.

    .venv/bin/python benchmarks/bench_video.py [--seconds 20] [--size 640x360] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time

import av
import numpy as np

from engine.multimodal.images import ImageLimits
from engine.multimodal.video import VideoInfo, decode_frames
from engine.multimodal.video_frames import uniform_indices


def make_clip(seconds: int, width: int, height: int, fps: int = 30, seed: int = 0) -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(seed)
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(2 * fps), "bf": "2", "preset": "veryfast"}
        base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        for i in range(seconds * fps):
            pixels = np.roll(base, 4 * i, axis=1)  # a pan: every frame differs
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def decode_everything(data: bytes, indices: list[int]) -> list[np.ndarray]:
    wanted = set(indices)
    frames = {}
    with av.open(io.BytesIO(data)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i > max(indices):
                break
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
    return [frames[i] for i in indices]


def fastest(run, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    data = make_clip(args.seconds, width, height)
    num_frames = args.seconds * 30
    qwen = np.arange(0, num_frames, 15).tolist()  # 2 frames a second at 30
    samplings = {
        "VILA1.5, 8 frames": uniform_indices(num_frames, 8),
        "Qwen2.5-VL, 2 fps": qwen,
        "first 8 frames": list(range(8)),
    }
    limits = ImageLimits()
    print(f"{args.seconds} s of {width}x{height} H.264 at 30 fps, GOP 60, {len(data)} bytes;")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'sampling':<20} {'frames':>6} {'sampled ms':>11} {'everything ms':>14} {'ratio':>6}")
    for name, indices in samplings.items():
        ours_ms, (info, ours) = fastest(
            lambda indices=indices: decode_frames(data, lambda info: indices, limits),
            args.repeats,
        )
        assert info == VideoInfo(num_frames, 30.0, width, height)
        theirs_ms, theirs = fastest(
            lambda indices=indices: decode_everything(data, indices), args.repeats
        )
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
        ratio = theirs_ms / ours_ms
        print(f"{name:<20} {len(indices):>6} {ours_ms:>11.1f} {theirs_ms:>14.1f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
