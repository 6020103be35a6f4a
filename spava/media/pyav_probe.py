"""PyAV probing: open a video, refuse what is not one, and read its layout in one demux pass.

Role
----
The first step of the default ``"pyav"`` backend. :func:`probe_pyav` opens a source,
checks that it holds a real video stream (not text rendered as frames, not a still
image, not audio or subtitles only), demuxes every packet of the video stream without
decoding them (a packet index: presentation timestamps and keyframes), and decodes only
the first frame to learn the picture size and the display rotation. Nothing here is
public API; :mod:`spava.media.video` exposes the result as :class:`VideoInfo`. PyAV is
imported only inside the functions that run.

Inputs
------
An ``_EncodedSource`` (a checked path or byte string).

Outputs
-------
* :func:`probe_pyav` -- a :class:`~spava.media.video_types.VideoInfo` carrying the
  :class:`PacketIndex` (hidden field) that the decoders use to seek and to identify frames.
* :func:`open_video_stream` -- ``(container, stream)`` with FFmpeg errors turned into
  :class:`~spava.media.video_types.VideoDecodeError` whose text is readable (no errno).
* :func:`describe_ffmpeg_error` -- that readable text.

How the layout is read
----------------------
* **Frames** are the video packets in presentation order; frame ``i`` is the one with
  the ``i``-th smallest presentation timestamp (pts). A packet that FFmpeg flags as
  corrupt (e.g. cut short by a truncated download) is not counted: it cannot decode.
  Containers that store decoding times as presentation times (H.264 with B-frames in
  AVI) give an index without timestamps: their frames are then decoded from the start
  and identified by their order.
* **Variable frame rate.** When the real start times stray from ``i / fps`` by more than
  a quarter of a frame, the stream counts as VFR (or mis-timed) and :class:`VideoInfo`
  carries the real display intervals (``frame_times``) for planning by time.
* **Duration.** ``duration`` is the span the frames really cover (first start to last
  end); ``container_duration`` is what the container declares for the video stream.
  Less real than declared means a truncated file; the decoder reports it.
* **Rotation.** FFmpeg attaches the stream's display matrix (phones write one) to every
  decoded frame; PyAV cannot read it from the stream, so the probe decodes the first frame.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from spava.media.video_types import _REENCODE_HINT, VideoDecodeError, VideoInfo, _EncodedSource, _import_backend

# FFmpeg demuxers and codecs that draw text or character art as video frames.
_TEXT_FORMATS = frozenset({"tty", "bin", "xbin", "adf", "idf"})
_TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
# Still-image demuxers: "image2" (files named like images) and "<codec>_pipe" (probed content).
_IMAGE_FORMATS = frozenset({"image2"})
_IMAGE_FORMAT_SUFFIX = "_pipe"

# Start times may stray from i / fps by this share of a frame before the stream counts as VFR.
_MAX_CFR_DEVIATION = 0.25


@dataclass(frozen=True)
class PacketIndex:
    """Video packets found by demuxing, without decoding (times in the stream's time base).

    Attributes:
        pts: Presentation timestamp of each frame, ascending (frame ``i`` has ``pts[i]``).
        keyframe_pts: Timestamps of the keyframes, ascending.
        num_packets: Data packets counted as frames, including any without a timestamp (then
            ``pts`` is incomplete and frames can only be identified by decoding order).
        end_pts: End of the last frame's display (its pts plus its duration).
        time_base: Seconds per timestamp unit.
        num_corrupt_packets: Packets the demuxer flags as corrupt (not counted as frames),
            except a corrupt last packet, which is where a truncated file was cut.
    """

    pts: tuple[int, ...]
    keyframe_pts: tuple[int, ...]
    num_packets: int
    end_pts: int
    time_base: Fraction
    num_corrupt_packets: int = 0

    @property
    def is_seekable(self) -> bool:
        """Every frame has a timestamp and there is a keyframe to seek to."""
        return self.num_packets > 0 and len(self.pts) == self.num_packets and bool(self.keyframe_pts)

    def seconds(self, pts: int) -> float:
        """``pts`` in seconds from the first frame's start."""
        return float((pts - self.pts[0]) * self.time_base)


def describe_ffmpeg_error(exc: BaseException) -> str:
    """FFmpeg's message without the errno and file name, e.g. ``"invalid data found when processing input"``."""
    text = getattr(exc, "strerror", None) or str(exc)
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(text)).strip().rstrip(".")
    return text[:1].lower() + text[1:]


@contextmanager
def open_video_stream(src: _EncodedSource, num_threads: int = 0) -> Iterator[tuple[Any, Any]]:
    """Open ``src`` with PyAV and yield ``(container, video_stream)``.

    FFmpeg errors raised while the block runs become :class:`VideoDecodeError`.
    ``num_threads`` is FFmpeg's decoder thread count (0: FFmpeg chooses).
    """
    av = _import_backend("pyav")
    try:
        container = av.open(src.open_arg(), mode="r")
    except (av.error.InvalidDataError, av.error.EOFError) as exc:
        raise VideoDecodeError(
            f"{src.label} is not a readable video container (FFmpeg: {describe_ffmpeg_error(exc)}); it is corrupt, "
            f"truncated or not a video file: check that it plays in a media player, or {_REENCODE_HINT}."
        ) from None
    except av.FFmpegError as exc:
        raise VideoDecodeError(
            f"FFmpeg could not open {src.label} ({describe_ffmpeg_error(exc)}); check the file, or {_REENCODE_HINT}."
        ) from None
    try:
        stream = _select_video_stream(container, src.label)
        # Threads must be configured before the first decode opens the codec.
        stream.thread_type = "AUTO"
        stream.thread_count = num_threads
        yield container, stream
    except av.FFmpegError as exc:
        raise VideoDecodeError(
            f"decoding {src.label} failed (FFmpeg: {describe_ffmpeg_error(exc)}); the file may be corrupt or "
            f"truncated, {_REENCODE_HINT}."
        ) from None
    finally:
        container.close()


def _describe_streams(container: Any) -> str:
    """``"mov,mp4,m4a,3gp,3g2,mj2 with streams [video: h264, audio: aac]"``-style summary."""
    streams = []
    for stream in container.streams:
        codec = stream.codec_context.name if stream.codec_context is not None else "unknown codec"
        streams.append(f"{stream.type}: {codec}")
    return f"format {container.format.name!r} with streams [{', '.join(streams) or 'none'}]"


def _select_video_stream(container: Any, label: str) -> Any:
    """Return the first real video stream, refusing text, still images and cover art."""
    import av

    format_name = container.format.name
    attached_pic = av.stream.Disposition.attached_pic
    streams = [s for s in container.streams.video if not s.disposition & attached_pic]
    codecs = {s.codec_context.name for s in streams if s.codec_context is not None}
    if format_name in _TEXT_FORMATS or codecs & _TEXT_CODECS:
        raise VideoDecodeError(
            f"{label} is text, not a video: FFmpeg reads it as {_describe_streams(container)}, which would only "
            "draw its characters as frames; pass a video file (a text to ask about goes in `document=`)."
        )
    if not streams:
        found = ", ".join(sorted({s.type for s in container.streams})) or "no streams at all"
        raise VideoDecodeError(
            f"{label} has no video stream (found: {found}): FFmpeg reads it as {_describe_streams(container)}; "
            "pass a file that contains video, not only audio or subtitles."
        )
    if format_name in _IMAGE_FORMATS or format_name.endswith(_IMAGE_FORMAT_SUFFIX):
        raise VideoDecodeError(
            f"{label} is a still image ({_describe_streams(container)}), not a video; pass it as in-memory "
            "frames instead: a uint8 array of shape [1, H, W, 3]."
        )
    stream = streams[0]
    if stream.codec_context is None:
        raise VideoDecodeError(
            f"{label}: the video codec is not supported by this FFmpeg build (no decoder for it; "
            f"{_describe_streams(container)}); {_REENCODE_HINT}."
        )
    return stream


def probe_pyav(src: _EncodedSource) -> VideoInfo:
    """Read ``src``'s layout: stream checks, packet index, first frame (size, rotation)."""
    import av

    start = time.perf_counter()
    with open_video_stream(src, num_threads=1) as (container, stream):
        index_start = time.perf_counter()
        index, first_frame = _index_packets(container, stream, av)
        index_seconds = time.perf_counter() - index_start
        if first_frame is None:
            raise VideoDecodeError(
                f"{src.label}: no frame of its video stream ({_describe_streams(container)}) decodes; "
                f"the file may be corrupt, {_REENCODE_HINT}."
            )
        info = _build_info(container, stream, index, first_frame, src.label)
    return _with_timing(info, time.perf_counter() - start, index_seconds)


def _with_timing(info: VideoInfo, probe_seconds: float, index_seconds: float) -> VideoInfo:
    from dataclasses import replace

    return replace(info, probe_seconds=probe_seconds, index_seconds=index_seconds)


def _index_packets(container: Any, stream: Any, av: Any) -> tuple[PacketIndex, Any]:
    """Demux the whole video stream; decode packets only until the first frame comes out."""
    pts: list[int] = []
    durations: dict[int, int] = {}
    keyframe_pts: list[int] = []
    num_packets = 0
    corrupt_flags = []  # per data packet in file order: a corrupt last one is the cut of a truncated file
    first_frame = None
    for packet in container.demux(stream):
        if first_frame is None:
            first_frame = _decode_first(stream, packet, av)
        # Empty packets are end-of-stream flush markers; discarded ones are never shown;
        # corrupt ones (cut short) cannot decode.
        if packet.size == 0 or packet.is_discard:
            continue
        corrupt_flags.append(packet.is_corrupt)
        if packet.is_corrupt:
            continue
        num_packets += 1
        if packet.pts is None:
            continue
        pts.append(packet.pts)
        durations[packet.pts] = packet.duration or 0
        if packet.is_keyframe:
            keyframe_pts.append(packet.pts)
    if _are_timestamps_decode_order(pts, stream):
        pts, keyframe_pts = [], []  # frames can then only be identified by their order
    pts.sort()
    end_pts = _end_pts(pts, durations)
    num_corrupt = sum(corrupt_flags) - (1 if corrupt_flags and corrupt_flags[-1] else 0)
    index = PacketIndex(
        tuple(pts), tuple(sorted(keyframe_pts)), num_packets, end_pts, stream.time_base or Fraction(1), num_corrupt
    )
    return index, first_frame


def _are_timestamps_decode_order(pts_in_file_order: list[int], stream: Any) -> bool:
    """True when packet "presentation" timestamps are really decoding times (e.g. H.264 in AVI).

    A decoder that reorders frames (B-frames) must get presentation times that go back and
    forth in file order; if they only increase, the container made them up from the decoding
    order, and the frames that come out carry times of other frames.
    """
    reorders = bool(getattr(stream.codec_context, "has_b_frames", False))
    return reorders and all(b > a for a, b in zip(pts_in_file_order, pts_in_file_order[1:]))


def _decode_first(stream: Any, packet: Any, av: Any) -> Any:
    """Feed one packet (``size 0`` flushes) to the decoder; the first frame out, or None."""
    try:
        frames = stream.decode(packet)
    except av.FFmpegError:
        return None  # a damaged packet: try the next one
    return frames[0] if frames else None


def _end_pts(pts: list[int], durations: dict[int, int]) -> int:
    """End of the last frame: its pts plus its duration (else the typical spacing, else 1)."""
    if not pts:
        return 0
    last_duration = durations.get(pts[-1], 0)
    if last_duration <= 0 and len(pts) > 1:
        deltas = sorted(b - a for a, b in zip(pts, pts[1:]))
        last_duration = deltas[len(deltas) // 2]
    return pts[-1] + max(last_duration, 1)


def _declared_duration(container: Any, stream: Any) -> float | None:
    """Duration the container declares for the video stream, in seconds; None when it declares none.

    The container-wide duration counts only when the video is the sole stream: with audio
    it may cover the longer of the two.
    """
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")  # Matroska writes one per track
    if tag:
        match = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d+)?)", tag.strip())
        if match:
            hours, minutes, seconds = match.groups()
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    if len(container.streams) == 1 and container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # container durations are in AV_TIME_BASE (microseconds)
    return None


def _nominal_fps(stream: Any) -> float | None:
    """Average frame rate, falling back to FFmpeg's guesses; None when unknown."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


def _frame_edges(index: PacketIndex, declared: float | None) -> tuple[float, ...]:
    """Display-interval edges in seconds from the first frame: N starts, then the last one's end.

    The last frame ends at its pts plus its packet's duration, unless the declared duration
    ends inside that span: packet durations of reordered (B-frame) streams are decoding
    intervals, and the declared end is then the tighter truth. A declared end past that span
    is not believed (a truncated file declares more than it holds).
    """
    starts = tuple(index.seconds(p) for p in index.pts)
    end = index.seconds(index.end_pts)
    if declared is not None and starts[-1] < declared < end:
        end = declared
    return starts + (end,)


def _is_variable_rate(edges: tuple[float, ...], fps: float) -> bool:
    """True when some frame starts more than a quarter frame away from ``i / fps``."""
    tolerance = _MAX_CFR_DEVIATION / fps
    return any(abs(t - i / fps) > tolerance for i, t in enumerate(edges[:-1]))


def _rotation_clockwise(frame: Any) -> int:
    """Degrees (0/90/180/270) to turn the decoded picture clockwise for display."""
    counterclockwise = getattr(frame, "rotation", 0) or 0  # PyAV reports the display matrix's angle
    return int(round(-counterclockwise / 90.0)) % 4 * 90


def _build_info(container: Any, stream: Any, index: PacketIndex, first_frame: Any, label: str) -> VideoInfo:
    declared = _declared_duration(container, stream)
    num_frames = index.num_packets
    if num_frames <= 0:
        raise VideoDecodeError(f"{label}: the video stream has no frames; {_REENCODE_HINT}.")
    edges = _frame_edges(index, declared) if index.is_seekable else None
    duration = edges[-1] if edges is not None else declared
    fps, is_vfr = _nominal_fps(stream), False
    if edges is not None and (fps is None or _is_variable_rate(edges, fps)):
        # The header's rate does not fit the real times: take the average over the real span,
        # and plan by time if the frames are not evenly spaced at that rate either.
        fps = num_frames / edges[-1]
        is_vfr = _is_variable_rate(edges, fps)
    if fps is None and duration:
        fps = num_frames / duration
    if fps is None:
        raise VideoDecodeError(f"{label}: cannot determine the frame rate; {_REENCODE_HINT} with `-r 30`.")
    if duration is None:
        duration = num_frames / fps
    rotation = _rotation_clockwise(first_frame)
    width, height = first_frame.width, first_frame.height
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        width=width,
        height=height,
        num_frames=num_frames,
        fps=fps,
        duration=duration,
        codec=stream.codec_context.name,
        rotation=rotation,
        container_format=container.format.name,
        is_vfr=is_vfr,
        frame_times=edges if is_vfr else None,
        container_duration=declared,
        container_num_frames=stream.frames if stream.frames > 0 else None,
        packet_index=index,
    )
