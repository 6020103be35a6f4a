"""The optional ``"decord"`` and ``"torchcodec"`` decoding backends.

Role
----
Decode the frames of a sampling plan with decord or torchcodec instead of PyAV, when
``decode_video(..., backend="decord"|"torchcodec")`` asks for it. Each library is
imported only when its backend runs (never at import time); a missing one raises an
ImportError naming the pip package.

Inputs
------
An ``_EncodedSource`` (a checked path or byte string), a
:class:`~spava.media.sampling.FrameSampling` and a decoder thread count (0 = decoder's choice).

Outputs
-------
A :class:`~spava.media.video_types.DecodedVideo` with uint8 ``[T, H, W, 3]`` RGB frames
and ``backend`` set to ``"decord"`` or ``"torchcodec"``; unreadable input raises
:class:`~spava.media.video_types.VideoDecodeError`.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from spava.media.sampling import FrameSampling, plan_frame_sampling
from spava.media.video_types import (
    _REENCODE_HINT,
    DecodedVideo,
    VideoDecodeError,
    _EncodedSource,
    _FrameSink,
    _import_backend,
)


def _decord_errors(decord: Any) -> tuple[type[BaseException], ...]:
    """Exception types decord raises for unreadable input (its own DECORDError plus builtins)."""
    errors: tuple[type[BaseException], ...] = (RuntimeError, OSError, ValueError)
    try:
        base = importlib.import_module("decord._ffi.base")
    except ImportError:
        return errors
    decord_error = getattr(base, "DECORDError", None)
    return errors + ((decord_error,) if isinstance(decord_error, type) else ())


def _decode_decord(src: _EncodedSource, sampling: FrameSampling, num_threads: int) -> DecodedVideo:
    decord = _import_backend("decord")
    errors = _decord_errors(decord)
    try:
        reader = decord.VideoReader(src.open_arg(), ctx=decord.cpu(0), num_threads=num_threads)
        num_frames, fps = len(reader), float(reader.get_avg_fps())
    except errors as exc:
        raise VideoDecodeError(
            f"decord could not open {src.label} (not a video file, corrupt, or no video stream): {exc}; "
            f"{_REENCODE_HINT}."
        ) from exc
    plan = plan_frame_sampling(num_frames, fps, sampling)
    sink = _FrameSink(plan)
    try:
        batch = reader.get_batch(sink.wanted)
        starts = np.asarray(reader.get_frame_timestamp(sink.wanted)).reshape(-1, 2)[:, 0]
    except errors as exc:
        raise VideoDecodeError(f"decord could not decode {src.label}: {exc}; {_REENCODE_HINT}.") from exc
    # decord returns its own NDArray unless a global bridge (e.g. torch) is set.
    rgb = np.asarray(batch.asnumpy() if hasattr(batch, "asnumpy") else batch)
    for source_index, frame, seconds in zip(sink.wanted, rgb, starts):
        sink.put(source_index, frame, float(seconds))
    return DecodedVideo(sink.frames, sink.timestamps, fps, num_frames, num_frames / fps, plan, "decord")


def _decode_torchcodec(src: _EncodedSource, sampling: FrameSampling, num_threads: int) -> DecodedVideo:
    decoders = _import_backend("torchcodec")
    source = str(src.path) if src.path is not None else src.data
    try:
        decoder = decoders.VideoDecoder(source, dimension_order="NHWC", num_ffmpeg_threads=num_threads)
        metadata = decoder.metadata
    except (RuntimeError, ValueError, OSError) as exc:
        raise VideoDecodeError(
            f"torchcodec could not open {src.label} (not a video file, corrupt, or no video stream): {exc}; "
            f"{_REENCODE_HINT}."
        ) from exc
    num_frames, fps = metadata.num_frames, metadata.average_fps
    if not num_frames or not fps:
        raise VideoDecodeError(f"torchcodec found no frame count or frame rate in {src.label}; {_REENCODE_HINT}.")
    plan = plan_frame_sampling(int(num_frames), float(fps), sampling)
    sink = _FrameSink(plan)
    try:
        batch = decoder.get_frames_at(indices=sink.wanted)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise VideoDecodeError(f"torchcodec could not decode {src.label}: {exc}; {_REENCODE_HINT}.") from exc
    for source_index, frame, seconds in zip(sink.wanted, batch.data.numpy(), batch.pts_seconds.tolist()):
        sink.put(source_index, frame, seconds)
    duration = float(metadata.duration_seconds or num_frames / fps)
    return DecodedVideo(sink.frames, sink.timestamps, float(fps), int(num_frames), duration, plan, "torchcodec")
