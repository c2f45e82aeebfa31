"""Videos in requests: the bytes behind a ``video_url`` (fetched under the rules and
limits images have, plus the video limits), and the frames a model samples, decoded with
PyAV (FFmpeg).

The frame API is model-agnostic: a model declares how it samples (a ``FrameSampler``:
the video's ``VideoInfo`` in, frame indices out) and ``decode_frames`` returns those
frames and nothing else. Every limit is checked from the container before a frame is
decoded: bytes, the frame count, the frame size. Frames are found by seeking: the
container's packets are read (not decoded) once, which gives every frame's timestamp and
where the keyframes are; decoding starts at the keyframe before each sampled frame (or
goes on, when that frame is close ahead) and stops at the last one, within a deadline.
A frame's index is its rank in presentation order, as when every frame is decoded.
"""

from __future__ import annotations

import bisect
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from engine.errors import InvalidRequestError
from engine.multimodal.fetch import too_large
from engine.multimodal.images import ImageInput, ImageLimits, check_size, media_bytes


@dataclass(frozen=True)
class VideoInfo:
    """What the container tells before any frame is decoded."""

    num_frames: int
    fps: float  # the stream's average frame rate
    width: int
    height: int


# A model's sampling: frame indices in [0, info.num_frames), in the order its prompt
# takes them (repeats allowed).
FrameSampler = Callable[[VideoInfo], Sequence[int]]


@dataclass(frozen=True, eq=False)
class VideoFrameInput(ImageInput):
    """A frame of a video given to the model as an image (VILA): it counts towards the
    prompt's videos, not its images."""


@dataclass(frozen=True)
class LoadedVideo:
    """A video as a prompt takes it: ``inputs`` for the model to encode, in order, and
    what stands for them in the prompt: ``text`` in a flattened message, ``parts`` where
    the chat template is given the message's parts."""

    inputs: list[ImageInput]
    text: str
    parts: list[dict]


def video_bytes(url: str, limits: ImageLimits) -> bytes:
    """The bytes behind a ``video_url``."""
    return media_bytes(url, "video", limits.max_video_bytes, limits)


def decode_frames(
    data: bytes,
    sample: FrameSampler,
    limits: ImageLimits,
    convert: Callable[[np.ndarray], Any] = lambda frame: frame,
) -> tuple[VideoInfo, list]:
    """The video's info and the frames ``sample`` picks, each RGB ``[H, W, 3]`` uint8
    given to ``convert`` as it is decoded (so a model that shrinks frames never holds
    them at full size). Raises InvalidRequestError for a video that is too large, too
    long, corrupt or truncated, or too slow to decode."""
    if len(data) > limits.max_video_bytes:
        raise too_large(limits.max_video_bytes, "video")
    deadline = time.monotonic() + limits.video_decode_timeout
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise InvalidRequestError("cannot decode a video: it has no video stream")
            stream = container.streams.video[0]
            check_size(stream.width, stream.height, limits.max_pixels)
            if (stream.frames or 0) > limits.max_video_frames:
                raise _too_long(stream.frames, limits.max_video_frames)
            packets = _read_packets(container, stream, limits.max_video_frames)
            info = VideoInfo(
                len(packets), float(stream.average_rate or 0), stream.width, stream.height
            )
            indices = list(sample(info))
            if any(not 0 <= i < info.num_frames for i in indices):
                raise InvalidRequestError(f"a video of {info.num_frames} frames cannot be sampled")
            frames = _decode_at(stream, packets, sorted(set(indices)), deadline, convert)
    except av.FFmpegError as e:
        raise InvalidRequestError(f"cannot decode a video: its bytes are not valid ({e})") from None
    return info, [frames[i] for i in indices]


def _read_packets(container, stream, max_frames: int) -> list:
    """The stream's packets in decode order (read, not decoded), refusing more than
    ``max_frames``. A container that gives no timestamps is refused."""
    packets = []
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        if packet.pts is None:
            raise InvalidRequestError("cannot decode a video: its frames have no timestamps")
        packets.append(packet)
        if len(packets) > max_frames:
            raise _too_long(len(packets), max_frames)
    if not packets:
        raise InvalidRequestError("cannot decode a video: it has no frames")
    return packets


def _decode_at(
    stream, packets: list, wanted: list[int], deadline: float, convert: Callable
) -> dict[int, Any]:
    """Frames ``wanted`` (sorted indices in presentation order) by index, converted."""
    timestamps = sorted(packet.pts for packet in packets)  # frame i shows at timestamps[i]
    keyframes = [k for k, packet in enumerate(packets) if packet.is_keyframe] or [0]
    frames: dict[int, Any] = {}
    wanted_set = set(wanted)
    codec = stream.codec_context
    next_packet = 0  # the next packet to feed the decoder
    for index in wanted:
        if index in frames:
            continue
        target = timestamps[index]
        # The last keyframe (in decode order) shown no later than the frame: from there
        # the decoder needs nothing earlier.
        start = max((k for k in keyframes if packets[k].pts <= target), default=keyframes[0])
        if start > next_packet:
            codec.flush_buffers()
            next_packet = start
        while index not in frames:
            if time.monotonic() > deadline:
                raise InvalidRequestError("a video takes too long to decode")
            packet = packets[next_packet] if next_packet < len(packets) else None
            if packet is None and next_packet > len(packets):
                raise InvalidRequestError("cannot decode a video: it is truncated")
            next_packet += 1
            for frame in codec.decode(packet):
                shown = bisect.bisect_left(timestamps, frame.pts) if frame.pts is not None else -1
                if shown in wanted_set and shown not in frames and timestamps[shown] == frame.pts:
                    frames[shown] = convert(frame.to_ndarray(format="rgb24"))
    return frames


def _too_long(num_frames: int, max_frames: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"a video of {num_frames} frames is longer than the limit of {max_frames} frames "
        "(--max-video-frames)"
    )
