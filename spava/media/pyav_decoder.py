"""PyAV decoding of one segment of a sampling plan into the caller's output array.

Role
----
The worker of the default ``"pyav"`` backend: :func:`decode_segment` opens its own
container, seeks to the keyframe at or before the segment's first wanted frame, decodes
forward and converts to RGB only the wanted frames, which a ``_SlotWriter`` puts into
``out``. :mod:`spava.media.parallel_decode` runs several of these at once (threads: PyAV
releases the GIL while FFmpeg decodes and converts). Nothing here is public API; PyAV is
imported only inside the functions that run.

Inputs
------
An ``_EncodedSource``, the :class:`~spava.media.pyav_probe.PacketIndex` of the probe, the
segment's wanted frame indices (ascending), a ``_SlotWriter``, an FFmpeg thread count, a
``check_stop()`` callable (raises to stop) and a :class:`DecodeStats` to add to.

Frames are identified by presentation timestamp: frame ``i`` is the one whose pts is
``index.pts[i]``, so seeking never shifts indices.

Seek misses
-----------
A decoder may drop frames after a seek (open GOPs, demuxers that land late). A frame that
does not come out where the index puts it is a *seek miss*; the segment's remaining frames
are then decoded forward without seeking from one keyframe earlier, and if that misses
too, from the start of the stream. A frame still missing then does not decode at all,
which is an error -- never a wrong frame.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from spava.media.pyav_probe import PacketIndex, describe_ffmpeg_error, open_video_stream
from spava.media.video_types import _REENCODE_HINT, VideoDecodeError, _EncodedSource, _SlotWriter


class _SeekMiss(Exception):
    """A wanted frame did not come out where the packet index put it."""


@dataclass
class DecodeStats:
    """What one worker did; workers' stats are added up into the decode report."""

    num_decoded_frames: int = 0
    num_seek_fallbacks: int = 0
    num_bad_packets: int = 0
    last_packet_error: str = ""
    resized_from: set[tuple[int, int]] = field(default_factory=set)

    def add(self, other: DecodeStats) -> None:
        self.num_decoded_frames += other.num_decoded_frames
        self.num_seek_fallbacks += other.num_seek_fallbacks
        self.num_bad_packets += other.num_bad_packets
        self.last_packet_error = other.last_packet_error or self.last_packet_error
        self.resized_from |= other.resized_from


def _decoded_frames(container: Any, stream: Any, stats: DecodeStats, check_stop: Callable[[], None]) -> Iterator[Any]:
    """Demux and decode the video stream, skipping packets that are cut short or fail to decode.

    Packets that fail are counted (frames that depend on them may show artifacts); the
    frames of skipped packets never come out, which the caller's pts check notices if they
    were wanted.
    """
    import av

    for packet in container.demux(stream):
        check_stop()
        if packet.size and packet.is_corrupt:
            continue  # the probe counted it; decoding a cut packet would give a damaged picture
        try:
            frames = stream.decode(packet)  # an empty packet flushes the decoder at the end
        except av.error.InvalidDataError as exc:
            stats.num_bad_packets += 1
            stats.last_packet_error = describe_ffmpeg_error(exc)
            continue
        for frame in frames:
            stats.num_decoded_frames += 1
            yield frame


def _advance_to(frames: Iterator[Any], target_pts: int) -> Any:
    """Pull frames until the one with ``target_pts``; raise :class:`_SeekMiss` if it is skipped."""
    for frame in frames:
        if frame.pts is None or frame.pts < target_pts:
            continue
        if frame.pts == target_pts:
            return frame
        raise _SeekMiss(f"expected pts {target_pts}, decoder went on to {frame.pts}")
    raise _SeekMiss(f"stream ended before pts {target_pts}")


def _seek(container: Any, stream: Any, keyframe_pts: int) -> None:
    """Position the demuxer on the keyframe with ``keyframe_pts`` (the decoder is flushed)."""
    import av

    try:
        container.seek(keyframe_pts, stream=stream, backward=True)
    except av.FFmpegError as exc:
        raise _SeekMiss(f"seek to pts {keyframe_pts} failed: {describe_ffmpeg_error(exc)}") from exc


class _Converter:
    """RGB conversion with one reused scaler (a fresh one per frame costs ~10x the conversion)."""

    def __init__(self, writer: _SlotWriter, stats: DecodeStats) -> None:
        from av.video.reformatter import VideoReformatter

        self.reformatter = VideoReformatter()
        self.height, self.width = writer.stored_size
        self.stats = stats

    def __call__(self, frame: Any) -> Any:
        if (frame.height, frame.width) == (self.height, self.width):
            return self.reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
        self.stats.resized_from.add((frame.width, frame.height))  # the stream changed size mid-way
        rgb = self.reformatter.reformat(frame, format="rgb24", width=self.width, height=self.height, threads=1)
        return rgb.to_ndarray()


def _keyframe_at_or_before(index: PacketIndex, pts: int) -> int | None:
    position = bisect_right(index.keyframe_pts, pts) - 1
    return index.keyframe_pts[position] if position >= 0 else None


def _decode_pass(
    src: _EncodedSource,
    index: PacketIndex,
    targets: list[int],
    writer: _SlotWriter,
    *,
    start_pts: int | None,
    is_seeking: bool,
    num_threads: int,
    check_stop: Callable[[], None],
    stats: DecodeStats,
) -> None:
    """Decode ``targets`` (frame indices), starting at keyframe ``start_pts`` (None: the stream start).

    With ``is_seeking``, also seek ahead whenever a keyframe lies between two wanted frames.
    Frames already written are skipped, so a pass may resume a failed one.
    """
    with open_video_stream(src, num_threads) as (container, stream):
        convert = _Converter(writer, stats)
        if start_pts is not None:
            _seek(container, stream, start_pts)
        frames = _decoded_frames(container, stream, stats, check_stop)
        position = index.pts[0] if start_pts is None else start_pts
        for source_index in targets:
            if source_index in writer.filled:
                continue
            target = index.pts[source_index]
            keyframe = _keyframe_at_or_before(index, target)
            if is_seeking and keyframe is not None and keyframe > position:
                _seek(container, stream, keyframe)
                frames = _decoded_frames(container, stream, stats, check_stop)
            frame = _advance_to(frames, target)
            writer.put(source_index, convert(frame), index.seconds(target))
            position = target


def decode_segment(
    src: _EncodedSource,
    index: PacketIndex,
    targets: list[int],
    writer: _SlotWriter,
    *,
    num_threads: int,
    check_stop: Callable[[], None],
    stats: DecodeStats,
) -> None:
    """Decode the wanted frames ``targets`` (ascending indices) of one segment into ``writer``.

    Tries seeking, then forward decoding from one keyframe earlier, then from the start.

    Raises:
        VideoDecodeError: A wanted frame does not decode even from the start of the stream.
    """
    first_keyframe = _keyframe_at_or_before(index, index.pts[targets[0]])
    start = first_keyframe if first_keyframe is not None and first_keyframe > index.pts[0] else None
    earlier = None if start is None else _keyframe_at_or_before(index, start - 1)
    attempts = [(start, True)]
    if earlier is not None and earlier > index.pts[0]:
        attempts.append((earlier, False))
    attempts.append((None, False))
    for attempt, (start_pts, is_seeking) in enumerate(attempts):
        try:
            _decode_pass(
                src, index, targets, writer, start_pts=start_pts, is_seeking=is_seeking,
                num_threads=num_threads, check_stop=check_stop, stats=stats,
            )
            return
        except _SeekMiss:
            if attempt + 1 < len(attempts):
                stats.num_seek_fallbacks += 1
    missing = [i for i in targets if i not in writer.filled]
    raise _missing_frames_error(src, index, missing, stats)


def _missing_frames_error(src: _EncodedSource, index: PacketIndex, missing: list[int], stats: DecodeStats) -> Exception:
    times = ", ".join(f"{index.seconds(index.pts[i]):.3f} s" for i in missing[:4])
    cause = ""
    if stats.num_bad_packets:
        cause = f" ({stats.num_bad_packets} damaged packets; FFmpeg: {stats.last_packet_error})"
    return VideoDecodeError(
        f"{src.label}: {len(missing)} planned frames do not decode{cause}, first at {times}; the file is "
        f"damaged, {_REENCODE_HINT}."
    )


def decode_by_order(
    src: _EncodedSource,
    writer: _SlotWriter,
    fps: float,
    *,
    num_threads: int,
    check_stop: Callable[[], None],
    stats: DecodeStats,
) -> None:
    """Decode from the start counting frames (for streams whose packets carry no timestamps).

    Frame ``k`` out of the decoder is source frame ``k``; stops after the last wanted one.
    """
    wanted = set(writer.wanted)
    last_wanted = max(wanted)
    with open_video_stream(src, num_threads) as (container, stream):
        convert = _Converter(writer, stats)
        for position, frame in enumerate(_decoded_frames(container, stream, stats, check_stop)):
            if position in wanted:  # the stream's times are missing or unreliable: the nominal time
                writer.put(position, convert(frame), position / fps)
            if position >= last_wanted:
                return
    raise VideoDecodeError(
        f"{src.label}: the stream ended after {len(writer.filled)} of the planned frames; the container "
        f"declares more frames than decode, {_REENCODE_HINT}."
    )
