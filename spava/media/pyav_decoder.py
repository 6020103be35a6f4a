"""PyAV decoding internals: open a stream, index its packets, decode planned frames.

Role
----
The low-level pieces of the default ``"pyav"`` backend; :mod:`spava.media.video` strings
them together (read the layout, plan, decode, fall back, re-plan). Nothing here is
public API. PyAV (``av``) is imported only inside the functions that run, never at
import time.

Inputs
------
An ``_EncodedSource`` (a checked path or byte string), an open PyAV container and
video stream (from :func:`_open_video_stream`), a :class:`~spava.media.sampling.FrameSampling`
or :class:`~spava.media.sampling.SamplingPlan`, and optionally a :class:`_PacketIndex`.

Outputs
-------
* :func:`_open_video_stream` -- ``(container, stream)``, FFmpeg errors turned into
  :class:`~spava.media.video_types.VideoDecodeError`.
* :func:`_index_packets` -- a :class:`_PacketIndex` (per-frame pts and keyframes, by demuxing).
* :func:`_read_info` -- a :class:`~spava.media.video_types.VideoInfo` from stream metadata.
* :func:`_wants_seek` -- whether a plan is sparse enough to be decoded by seeking.
* :func:`_decode_sequential` / :func:`_decode_with_seeks` -- fill a ``_FrameSink`` with
  the planned frames as uint8 RGB, decoding from the start or seeking to keyframes;
  the seek path raises :class:`_SeekMiss` when a frame is not where the index puts it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from spava.media.sampling import FrameSampling, plan_frame_sampling
from spava.media.video_types import (
    _REENCODE_HINT,
    VideoDecodeError,
    VideoInfo,
    _EncodedSource,
    _FrameSink,
    _import_backend,
)

# The seek path pays for a packet-indexing pass, so it is only tried on videos with at
# least this many frames, when sequential decoding would decode at least this many
# frames per planned frame.
_MIN_FRAMES_FOR_SEEK = 64
_MIN_DECODED_PER_WANTED_FOR_SEEK = 8


@dataclass(frozen=True)
class _PacketIndex:
    """Video packets found by demuxing, without decoding.

    ``pts[i]`` is the presentation timestamp of source frame ``i`` (sorted); ``keyframe_pts``
    the sorted timestamps of keyframes. ``num_packets`` counts every data packet, including
    any without a timestamp (then ``pts`` is incomplete and unusable for seeking).
    """

    pts: tuple[int, ...]
    keyframe_pts: tuple[int, ...]
    num_packets: int

    @property
    def is_seekable(self) -> bool:
        return self.num_packets > 0 and len(self.pts) == self.num_packets and bool(self.keyframe_pts)


class _SeekMiss(Exception):
    """The seek path did not find a wanted frame where the packet index put it."""


@contextmanager
def _open_video_stream(src: _EncodedSource, num_threads: int = 0) -> Iterator[tuple[Any, Any]]:
    """Open ``src`` with PyAV and yield ``(container, video_stream)``.

    FFmpeg errors raised while the block runs become :class:`VideoDecodeError`.
    """
    av = _import_backend("pyav")
    try:
        container = av.open(src.open_arg(), mode="r")
    except (av.error.InvalidDataError, av.error.EOFError) as exc:
        raise VideoDecodeError(
            f"{src.label} is not a readable video container (corrupt, truncated, or not a video file): {exc}; "
            f"check the file plays in a media player, or {_REENCODE_HINT}."
        ) from exc
    except av.FFmpegError as exc:
        raise VideoDecodeError(
            f"FFmpeg could not open {src.label}: {exc}; check the file, or {_REENCODE_HINT}."
        ) from exc
    try:
        stream = _select_video_stream(container, src.label)
        # Threads must be configured before the first decode opens the codec.
        stream.thread_type = "AUTO"
        stream.thread_count = num_threads
        yield container, stream
    except av.FFmpegError as exc:
        raise VideoDecodeError(
            f"decoding {src.label} failed: {exc}; the file may be corrupt or truncated, {_REENCODE_HINT}."
        ) from exc
    finally:
        container.close()


def _select_video_stream(container: Any, label: str) -> Any:
    """Return the first real video stream (cover-art pictures do not count)."""
    import av

    attached_pic = av.stream.Disposition.attached_pic
    streams = [s for s in container.streams.video if not s.disposition & attached_pic]
    if not streams:
        found = ", ".join(sorted({s.type for s in container.streams})) or "no streams at all"
        raise VideoDecodeError(
            f"{label} has no video stream (found: {found}); pass a file that contains video, not only audio."
        )
    stream = streams[0]
    if stream.codec_context is None:
        raise VideoDecodeError(
            f"{label}: the video codec is not supported by this FFmpeg build (no decoder for it); {_REENCODE_HINT}."
        )
    return stream


def _stream_fps(stream: Any) -> float | None:
    """Average frame rate, falling back to FFmpeg's guesses; None when unknown."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


def _stream_duration(container: Any, stream: Any) -> float | None:
    """Duration in seconds from the stream, else the container; None when unknown."""
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # container durations are in AV_TIME_BASE (microseconds)
    return None


def _index_packets(container: Any, stream: Any) -> _PacketIndex:
    """Demux (not decode) the whole video stream and record packet timestamps and keyframes."""
    pts: list[int] = []
    keyframe_pts: list[int] = []
    num_packets = 0
    for packet in container.demux(stream):
        # Empty packets are end-of-stream flush markers; discarded ones are never shown.
        if packet.size == 0 or packet.is_discard:
            continue
        num_packets += 1
        if packet.pts is None:
            continue
        pts.append(packet.pts)
        if packet.is_keyframe:
            keyframe_pts.append(packet.pts)
    return _PacketIndex(pts=tuple(sorted(pts)), keyframe_pts=tuple(sorted(keyframe_pts)), num_packets=num_packets)


def _read_info(container: Any, stream: Any, index: _PacketIndex | None, label: str) -> VideoInfo:
    """Combine stream metadata with an optional packet index into a :class:`VideoInfo`."""
    fps, duration = _stream_fps(stream), _stream_duration(container, stream)
    num_frames, is_estimated = stream.frames, False
    if index is not None:
        num_frames = index.num_packets
    elif num_frames <= 0 and fps is not None and duration is not None:
        num_frames, is_estimated = max(1, round(duration * fps)), True
    if num_frames <= 0:
        raise VideoDecodeError(f"{label}: the video stream has no frames; {_REENCODE_HINT}.")
    if fps is None and duration:
        fps = num_frames / duration
    if fps is None:
        raise VideoDecodeError(f"{label}: cannot determine the frame rate; {_REENCODE_HINT} with `-r 30`.")
    if duration is None:
        duration = num_frames / fps
    codec = stream.codec_context.name
    width, height = stream.codec_context.width, stream.codec_context.height
    return VideoInfo(width, height, num_frames, fps, duration, codec, is_estimated)


def _wants_seek(num_frames: int, fps: float, sampling: FrameSampling) -> bool:
    """True when the plan skips most frames, so seeking to keyframes can beat decoding them all."""
    if num_frames < _MIN_FRAMES_FOR_SEEK:
        return False
    try:
        plan = plan_frame_sampling(num_frames, fps, sampling)
    except ValueError:
        return False  # the exact plan made later reports the problem
    num_decoded_sequentially = max(plan.indices) + 1
    return num_decoded_sequentially >= _MIN_DECODED_PER_WANTED_FOR_SEEK * len(set(plan.indices))


def _frame_seconds(frame: Any, stream: Any, fallback: float) -> float:
    """Presentation time of ``frame`` in seconds from the stream start."""
    if frame.pts is None or stream.time_base is None:
        return fallback
    start = stream.start_time or 0
    return float((frame.pts - start) * stream.time_base)


def _to_rgb(frame: Any, size: tuple[int, int] | None) -> np.ndarray:
    """Convert an AVFrame to uint8 ``[H, W, 3]``, rescaling if the stream changed size mid-way."""
    if size is None or (frame.height, frame.width) == tuple(size):
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", height=size[0], width=size[1])


def _decode_sequential(container: Any, stream: Any, sink: _FrameSink, fps: float) -> int | None:
    """Decode from the start, converting only wanted frames; stop after the last wanted one.

    Returns the number of frames in the stream if decoding reached its end, else None.
    """
    wanted = set(sink.slots)
    last_wanted = max(wanted)
    num_seen = 0
    for index, frame in enumerate(container.decode(stream)):
        num_seen = index + 1
        if index in wanted:
            sink.put(index, _to_rgb(frame, sink.frame_size), _frame_seconds(frame, stream, index / fps))
        if index >= last_wanted:
            return None
    return num_seen


def _advance_to(frames: Iterator[Any], target_pts: int) -> Any:
    """Pull frames until the one with ``target_pts``; raise :class:`_SeekMiss` if it is skipped."""
    for frame in frames:
        if frame.pts is None or frame.pts < target_pts:
            continue
        if frame.pts == target_pts:
            return frame
        raise _SeekMiss(f"expected pts {target_pts}, decoder went on to {frame.pts}")
    raise _SeekMiss(f"stream ended before pts {target_pts}")


def _decode_with_seeks(
    container: Any,
    stream: Any,
    index: _PacketIndex,
    sink: _FrameSink,
    advance_to: Callable[[Iterator[Any], int], Any] = _advance_to,
) -> None:
    """Decode wanted frames, seeking to the keyframe before one whenever that skips decoding.

    Frame ``i`` is identified by its presentation timestamp ``index.pts[i]``, so seeking never
    shifts indices; a frame that does not show up where expected raises :class:`_SeekMiss`.
    ``advance_to`` pulls frames up to a target pts (:func:`_advance_to`; injectable so that
    :mod:`spava.media.video` can route it through its own, patchable, name).
    """
    import av

    frames = container.decode(stream)
    position = index.pts[0]  # the decoder starts at the first frame
    for source_index in sink.wanted:
        target = index.pts[source_index]
        key_position = bisect_right(index.keyframe_pts, target) - 1
        keyframe = index.keyframe_pts[key_position] if key_position >= 0 else None
        if keyframe is not None and keyframe > position:
            try:
                container.seek(keyframe, stream=stream, backward=True)
            except av.FFmpegError as exc:
                raise _SeekMiss(f"seek to pts {keyframe} failed: {exc}") from exc
            frames = container.decode(stream)
        frame = advance_to(frames, target)
        seconds = _frame_seconds(frame, stream, (target - index.pts[0]) * float(stream.time_base))
        sink.put(source_index, _to_rgb(frame, sink.frame_size), seconds)
        position = target
