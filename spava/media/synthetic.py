"""Synthetic videos for tests and demos, whose frames carry their own index.

Role
----
:func:`make_synthetic_frames` draws ``[T, H, W, 3]`` uint8 RGB frames: a drifting colour
gradient, a moving rectangle, and two solid grey blocks in the top-left corner whose
intensities encode the frame index (low and high base-16 digit, 16 grey levels apart,
so the code survives lossy compression with a tolerance of +-7). :func:`read_frame_index`
reads the index back from a decoded frame. :func:`write_synthetic_video` encodes the
frames to a file with PyAV (imported lazily), so tests can check which source frames a
decoder returned. Indices are encoded modulo 256.
"""

from __future__ import annotations

import os
from fractions import Fraction
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

# Grey level of digit d is d * _LEVEL_STEP + _LEVEL_STEP // 2: the middle of its bucket.
_LEVEL_STEP = 16
_NUM_LEVELS = 16


def _code_block_size(height: int, width: int) -> int:
    """Side of each code block: up to 16 px, even, leaving room for the rest of the picture."""
    size = min(16, height // 3, width // 4)
    return size - size % 2


def _check_args(num_frames: int, height: int, width: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if _code_block_size(height, width) < 4:
        raise ValueError(
            f"synthetic frames need height >= 12 and width >= 16 to hold the index code, got {height}x{width}."
        )


def iter_synthetic_frames(
    num_frames: int, height: int, width: int, seed: int = 0, noise: float = 0.0
) -> Iterator[np.ndarray]:
    """Yield the frames of :func:`make_synthetic_frames` one by one (uint8 ``[H, W, 3]`` each).

    Frame ``i`` equals ``make_synthetic_frames(num_frames, height, width, seed)[i]`` when
    ``noise == 0``; use this for long or large videos that should not sit in memory at once.
    ``noise`` adds grain of that standard deviation (grey levels) to the picture, not to the
    code blocks, so encoded files get closer to camera footage in size and decoding cost.
    """
    _check_args(num_frames, height, width)
    rng = np.random.default_rng(seed)
    base_colour = rng.uniform(40, 200, size=3)
    rect_colour = rng.uniform(0, 255, size=3)
    speed_y, speed_x = rng.uniform(0.5, 2.0, size=2)
    # sin(2 pi (x + y) + phase_c) = sin(u) cos(v_c) + cos(u) sin(v_c): outer products, no per-pixel sin.
    u = 2 * np.pi * np.linspace(0.0, 1.0, width)[None, :, None]
    v = 2 * np.pi * np.linspace(0.0, 1.0, height)[:, None, None] + np.arange(3)
    sin_u, cos_u = np.sin(u).astype(np.float32), np.cos(u).astype(np.float32)
    grain = None
    if noise > 0:
        grain = rng.normal(0.0, noise, size=(_NUM_GRAIN_FIELDS, height, width, 1)).astype(np.float32)
    block = _code_block_size(height, width)
    rect_h, rect_w = max(2, height // 5), max(2, width // 5)
    for i in range(num_frames):
        phase = 2 * np.pi * i / max(num_frames, 8)
        cos_v = (50 * np.cos(v + phase)).astype(np.float32)
        sin_v = (50 * np.sin(v + phase)).astype(np.float32)
        picture = sin_u * cos_v + cos_u * sin_v
        picture += base_colour.astype(np.float32)
        if grain is not None:
            picture += np.roll(grain[i % _NUM_GRAIN_FIELDS], i, axis=1)
        # The rectangle bounces below the code blocks so it never touches them.
        top = block + 2 + int((height - block - 2 - rect_h) * (0.5 + 0.5 * np.sin(speed_y * phase)))
        left = int((width - rect_w) * (0.5 + 0.5 * np.sin(speed_x * phase + 1.0)))
        frame = np.clip(picture, 0, 255).astype(np.uint8)
        frame[top : top + rect_h, left : left + rect_w] = np.clip(rect_colour, 0, 255).astype(np.uint8)
        low, high = i % _NUM_LEVELS, (i // _NUM_LEVELS) % _NUM_LEVELS
        frame[:block, :block] = low * _LEVEL_STEP + _LEVEL_STEP // 2
        frame[:block, block : 2 * block] = high * _LEVEL_STEP + _LEVEL_STEP // 2
        yield frame


# Independent grain fields cycled (and shifted) by the noisy frames.
_NUM_GRAIN_FIELDS = 5


def make_synthetic_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Draw frames whose content moves over time and whose top-left blocks encode the index.

    Args:
        num_frames: Number of frames T >= 1.
        height: Frame height H (>= 12).
        width: Frame width W (>= 16).
        seed: Picks the colours and the rectangle's path; same seed, same frames.

    Returns:
        uint8 RGB array ``[T, H, W, 3]``; ``read_frame_index(frames[i]) == i % 256``.
    """
    _check_args(num_frames, height, width)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(iter_synthetic_frames(num_frames, height, width, seed)):
        frames[i] = frame
    return frames


def read_frame_index(frame: np.ndarray) -> int:
    """Read the index (mod 256) that :func:`make_synthetic_frames` drew into ``frame``.

    Args:
        frame: uint8 RGB frame ``[H, W, 3]``, possibly after lossy encode + decode.

    Returns:
        The frame index modulo 256.
    """
    height, width = frame.shape[:2]
    block = _code_block_size(height, width)
    margin = block // 4  # the centre of a block is safest from compression ringing at its edges

    def digit(left: int) -> int:
        patch = frame[margin : block - margin, left + margin : left + block - margin].astype(np.float64)
        return int(np.clip(np.floor(patch.mean() / _LEVEL_STEP), 0, _NUM_LEVELS - 1))

    return digit(0) + _NUM_LEVELS * digit(block)


def _default_codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_synthetic_video(
    path: str | os.PathLike,
    *,
    num_frames: int = 16,
    height: int = 64,
    width: int = 96,
    fps: float = 8.0,
    codec: str | None = None,
    seed: int = 0,
    keyframe_interval: int | None = None,
    frame_times: Sequence[float] | None = None,
    rotation: int = 0,
    crf: int = 18,
    noise: float = 0.0,
) -> Path:
    """Encode :func:`make_synthetic_frames` output to a video file with PyAV (frame by frame).

    Args:
        path: Output file; the container format follows the extension (``.mp4``, ``.mkv``, ...).
        num_frames: Number of frames.
        height: Frame height of the stored (coded) picture (even: yuv420p needs it).
        width: Frame width of the stored picture (even).
        fps: Frame rate; with ``frame_times`` only the nominal rate handed to the encoder.
        codec: FFmpeg encoder; None picks ``"libx264"`` when available, else ``"mpeg4"``.
        seed: Passed to :func:`make_synthetic_frames`.
        keyframe_interval: Frames between keyframes (GOP size); None keeps the encoder default.
        frame_times: Presentation time of each frame in seconds (strictly increasing, length
            ``num_frames``) for a variable-frame-rate video; None: frame ``i`` at ``i / fps``.
            Times are stored in milliseconds.
        rotation: Degrees (0, 90, 180 or 270) by which a player must turn the stored picture
            clockwise to display it, written as the stream's display matrix (what phones
            record); the frames themselves are stored unrotated.
        crf: libx264 quality (lower is better and larger).
        noise: Grain added to the picture (see :func:`iter_synthetic_frames`).

    Returns:
        The path written.
    """
    import av

    if height % 2 or width % 2:
        raise ValueError(f"height and width must be even for yuv420p video, got {height}x{width}.")
    if rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be 0, 90, 180 or 270 degrees, got {rotation!r}.")
    pts = _frame_pts(num_frames, frame_times)
    codec = codec or _default_codec()
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if pts is not None:
            stream.codec_context.time_base = _VFR_TIME_BASE
        if rotation:
            stream.set_display_rotation(-rotation)  # PyAV takes the counter-clockwise angle
        if keyframe_interval is not None:
            stream.codec_context.gop_size = keyframe_interval
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        else:
            stream.codec_context.bit_rate = 4_000_000  # high enough that the index blocks stay crisp
        for index, rgb in enumerate(iter_synthetic_frames(num_frames, height, width, seed, noise)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[index], _VFR_TIME_BASE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed (B-)frames
            container.mux(packet)
    return path


# Time base of variable-frame-rate synthetic videos: milliseconds.
_VFR_TIME_BASE = Fraction(1, 1000)


def _frame_pts(num_frames: int, frame_times: Sequence[float] | None) -> list[int] | None:
    """Frame times in seconds -> integer pts in milliseconds (None stays None)."""
    if frame_times is None:
        return None
    if len(frame_times) != num_frames:
        raise ValueError(f"frame_times has {len(frame_times)} entries for num_frames={num_frames}; give one per frame.")
    pts = [round(float(t) * 1000) for t in frame_times]
    if pts[0] < 0 or any(b <= a for a, b in zip(pts, pts[1:])):
        raise ValueError("frame_times must be >= 0 and strictly increasing (at millisecond resolution).")
    return pts
