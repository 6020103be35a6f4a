"""Video decoding: a path, raw bytes or in-memory frames in, sampled RGB frames out.

Role
----
:func:`decode_video` turns a video source plus a :class:`~spava.media.sampling.FrameSampling`
into a :class:`DecodedVideo` holding exactly the frames of the sampling plan.
:func:`probe_video` reads a video's metadata (size, frame count, fps, duration, codec)
without decoding any frame, so admission checks (token budgets) can run first.

Inputs
------
``source`` is one of:

* a path (``str`` or ``os.PathLike``) to an encoded video file;
* ``bytes`` / ``bytearray`` / ``memoryview`` holding an encoded video file in memory;
* already-decoded frames: a ``[T, H, W, 3]`` uint8 RGB array, or a sequence of
  ``[H, W, 3]`` uint8 arrays of one size. These have no frame rate of their own, so
  they are taken to be ``sampling.fps`` frames per second -- or 2.0 fps when
  ``sampling`` asks for ``num_frames`` -- and the plan runs over them at that rate
  (``start_time``/``end_time`` are in that time base too). With the default
  ``fps=2.0`` that keeps every frame up to ``max_frames``, rounded down to a multiple
  of ``frame_multiple``.

Outputs
-------
``DecodedVideo.frames`` is uint8 ``[T, H, W, 3]`` RGB at the stored resolution (no
resizing here: ``min_pixels``/``max_pixels`` are for the image processor), with
``T == len(plan.indices)``; ``timestamps`` are the frames' presentation times in
seconds from the start of the stream.

Backends
--------
``"pyav"`` (the default; ``"auto"`` picks it), ``"decord"`` and ``"torchcodec"``
(each imported only when asked for; a clear ImportError names the pip package if
missing). The PyAV path decodes in FFmpeg's threads and converts to RGB only the
planned frames (conversion is the expensive part). Dense plans decode sequentially
from the start and stop after the last planned frame; sparse plans on long videos
(most frames skipped) first index the packets, then seek to the keyframe before each
wanted frame when that skips decoding, falling back to a sequential pass if a seek
does not land where the index says. A container whose frame count is missing is
indexed by demuxing its packets; one that over-reports it (e.g. a truncated file) is
re-planned over the frames that actually decode.

Errors
------
:class:`VideoDecodeError` (a ``ValueError``) for a missing, empty, corrupt or
undecodable source, one without a video stream, or an unsupported codec; the
message says what was wrong and what to do. Rotation metadata is not applied.

Module layout
-------------
This module is the public entry point and drives the PyAV backend (read the layout,
plan, decode by seeking or sequentially, fall back, re-plan). The pieces live in:

* :mod:`spava.media.video_types` -- errors, dataclasses, constants, source checks,
  the frame sink all backends fill (imports none of the others);
* :mod:`spava.media.pyav_decoder` -- PyAV internals: stream opening, packet index,
  sequential and seek decoding;
* :mod:`spava.media.other_decoders` -- the decord and torchcodec backends.

The public names are re-exported here (import them from this module). The PyAV driver
below looks up ``_wants_seek``, ``_decode_sequential`` and ``_advance_to`` in this
module's namespace at call time, so patching them on ``spava.media.video`` (as the
tests do) takes effect.
"""

from __future__ import annotations

import numpy as np

from spava.media.other_decoders import _decode_decord, _decode_torchcodec
from spava.media.pyav_decoder import (
    _advance_to,
    _decode_sequential,
    _decode_with_seeks,
    _index_packets,
    _open_video_stream,
    _PacketIndex,
    _read_info,
    _SeekMiss,
    _stream_duration,
    _stream_fps,
    _wants_seek,
)
from spava.media.sampling import FrameSampling, SamplingPlan, plan_frame_sampling
from spava.media.video_types import (
    _REENCODE_HINT,
    BACKENDS,
    DEFAULT_FRAMES_FPS,
    DecodedVideo,
    VideoDecodeError,
    VideoInfo,
    VideoSource,
    _as_encoded_source,
    _as_frame_array,
    _EncodedSource,
    _FrameSink,
    _is_frames_source,
)


def _read_layout(src: _EncodedSource, sampling: FrameSampling | None) -> tuple[VideoInfo, _PacketIndex | None]:
    """Read metadata; index the packets when the frame count is unknown or the plan is sparse.

    ``sampling=None`` (probing) only indexes when nothing else gives a frame count.
    """
    with _open_video_stream(src) as (container, stream):
        fps, duration = _stream_fps(stream), _stream_duration(container, stream)
        hint = stream.frames if stream.frames > 0 else round((duration or 0) * (fps or 0))
        if sampling is None:
            needs_index = hint <= 0
        else:
            needs_index = stream.frames <= 0 or fps is None or _wants_seek(hint, fps, sampling)
        index = _index_packets(container, stream) if needs_index else None
        return _read_info(container, stream, index, src.label), index


def _decode_plan_pyav(
    src: _EncodedSource, plan: SamplingPlan, index: _PacketIndex | None, fps: float, num_threads: int
) -> tuple[_FrameSink, int | None]:
    """Decode the frames of ``plan``; returns the filled sink and, if EOF was hit, the frame count."""
    if index is not None and index.is_seekable and len(index.pts) > max(plan.indices):
        sink = _FrameSink(plan)
        with _open_video_stream(src, num_threads) as (container, stream):
            try:
                _decode_with_seeks(container, stream, index, sink, advance_to=_advance_to)
                return sink, None
            except _SeekMiss:
                pass  # e.g. a decoder that drops frames after seeks: redo it sequentially
    sink = _FrameSink(plan)
    with _open_video_stream(src, num_threads) as (container, stream):
        return sink, _decode_sequential(container, stream, sink, fps)


def _decode_pyav(src: _EncodedSource, sampling: FrameSampling, num_threads: int) -> DecodedVideo:
    info, index = _read_layout(src, sampling)
    plan = plan_frame_sampling(info.num_frames, info.fps, sampling)
    sink, num_seen = _decode_plan_pyav(src, plan, index, info.fps, num_threads)
    if sink.missing and num_seen:
        # The container claimed more frames than decode (e.g. a truncated file): plan over the real ones.
        plan = plan_frame_sampling(num_seen, info.fps, sampling)
        sink, _ = _decode_plan_pyav(src, plan, None, info.fps, num_threads)
        info = VideoInfo(info.width, info.height, num_seen, info.fps, num_seen / info.fps, info.codec)
    if sink.missing or sink.frames is None:
        raise VideoDecodeError(
            f"{src.label}: no decodable frames for source indices {sink.missing[:8]}; "
            f"the file may be corrupt, {_REENCODE_HINT}."
        )
    return DecodedVideo(sink.frames, sink.timestamps, info.fps, info.num_frames, info.duration, plan, "pyav")


def _decode_frames(frames: np.ndarray, sampling: FrameSampling) -> DecodedVideo:
    """Sample in-memory frames, taken to run at ``sampling.fps`` (or 2.0) frames per second."""
    fps = float(sampling.fps) if sampling.fps is not None else DEFAULT_FRAMES_FPS
    num_frames = frames.shape[0]
    plan = plan_frame_sampling(num_frames, fps, sampling)
    sampled = frames[list(plan.indices)]
    return DecodedVideo(sampled, list(plan.timestamps), fps, num_frames, num_frames / fps, plan, "frames")


def decode_video(
    source: VideoSource, sampling: FrameSampling, *, backend: str = "auto", num_threads: int = 0
) -> DecodedVideo:
    """Decode the frames that ``sampling`` plans for ``source``.

    Args:
        source: Path, encoded bytes, a uint8 ``[T, H, W, 3]`` RGB array, or a sequence of
            uint8 ``[H, W, 3]`` arrays (see the module docstring for their assumed fps).
        sampling: What to sample (fps or exact count, bounds, time window).
        backend: ``"auto"`` (= ``"pyav"``), ``"pyav"``, ``"decord"`` or ``"torchcodec"``;
            ignored for in-memory frames.
        num_threads: Decoder threads; 0 lets the decoder choose.

    Returns:
        A :class:`DecodedVideo` whose ``frames`` is uint8 ``[T, H, W, 3]``, T = ``plan.num_frames``.

    Raises:
        VideoDecodeError: Unreadable source (message says why and what to do).
        ValueError: Sampling that cannot apply to this video (e.g. start_time past its end).
        ImportError: The requested backend is not installed (names the pip package).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}; use backend='auto'.")
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 0:
        raise ValueError(f"num_threads must be an integer >= 0 (0 = decoder's choice), got {num_threads!r}.")
    if not isinstance(sampling, FrameSampling):
        raise TypeError(f"sampling must be a FrameSampling, got {type(sampling).__name__}")
    if _is_frames_source(source):
        return _decode_frames(_as_frame_array(source), sampling)
    src = _as_encoded_source(source)
    if backend == "decord":
        return _decode_decord(src, sampling, num_threads)
    if backend == "torchcodec":
        return _decode_torchcodec(src, sampling, num_threads)
    return _decode_pyav(src, sampling, num_threads)


def probe_video(source: VideoSource) -> VideoInfo:
    """Read a video's metadata without decoding frames (uses PyAV).

    The frame count comes from the container when recorded, else ``round(duration * fps)``
    (``is_num_frames_estimated=True``), else from demuxing packets. In-memory frames report
    their shape, ``fps=2.0`` and ``codec="raw"``.

    Raises:
        VideoDecodeError: Missing, empty, corrupt or undecodable source, or no video stream.
    """
    if _is_frames_source(source):
        frames = _as_frame_array(source)
        num_frames, height, width = frames.shape[:3]
        fps = DEFAULT_FRAMES_FPS
        return VideoInfo(width, height, num_frames, fps, num_frames / fps, "raw")
    info, _ = _read_layout(_as_encoded_source(source), sampling=None)
    return info
