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
"""

from __future__ import annotations

import importlib
import io
import math
import os
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

import numpy as np

from spava.media.sampling import FrameSampling, SamplingPlan, plan_frame_sampling

VideoSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Sequence[np.ndarray]]

BACKENDS = ("auto", "pyav", "decord", "torchcodec")

# Frame rate assumed for in-memory frames when the sampling does not name one.
DEFAULT_FRAMES_FPS = 2.0

# The seek path pays for a packet-indexing pass, so it is only tried on videos with at
# least this many frames, when sequential decoding would decode at least this many
# frames per planned frame.
_MIN_FRAMES_FOR_SEEK = 64
_MIN_DECODED_PER_WANTED_FOR_SEEK = 8

# Module to import and pip package to suggest, per backend (read-only).
_BACKEND_MODULES = MappingProxyType(
    {"pyav": ("av", "av"), "decord": ("decord", "decord"), "torchcodec": ("torchcodec.decoders", "torchcodec")}
)

_REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p OUTPUT.mp4`"


class VideoDecodeError(ValueError):
    """A video source could not be read; the message says why and what to do."""


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of a video stream, read without decoding frames.

    Attributes:
        width: Frame width in pixels.
        height: Frame height in pixels.
        num_frames: Number of frames (estimated when ``is_num_frames_estimated``).
        fps: Average frame rate in frames per second.
        duration: Duration in seconds.
        codec: FFmpeg codec name (e.g. ``"h264"``), or ``"raw"`` for in-memory frames.
        is_num_frames_estimated: True when ``num_frames`` is ``round(duration * fps)``
            because the container did not record a frame count.
    """

    width: int
    height: int
    num_frames: int
    fps: float
    duration: float
    codec: str
    is_num_frames_estimated: bool = False


@dataclass
class DecodedVideo:
    """The sampled frames of a video.

    Attributes:
        frames: uint8 RGB frames, shape ``[T, H, W, 3]`` with ``T == plan.num_frames``.
        timestamps: Presentation time of each frame in seconds, length T.
        source_fps: Frame rate of the source (assumed rate for in-memory frames).
        num_source_frames: Frames in the source that the plan was made over.
        duration: Source duration in seconds.
        plan: The sampling plan the frames follow.
        backend: ``"pyav"``, ``"decord"``, ``"torchcodec"`` or ``"frames"`` (in-memory input).
    """

    frames: np.ndarray
    timestamps: list[float]
    source_fps: float
    num_source_frames: int
    duration: float
    plan: SamplingPlan
    backend: str


@dataclass(frozen=True)
class _EncodedSource:
    """An encoded video: a file path or bytes in memory, with a label for messages."""

    path: Path | None
    data: bytes | None
    label: str

    def open_arg(self) -> str | io.BytesIO:
        """What FFmpeg-based readers open: the path, or a fresh in-memory file."""
        return str(self.path) if self.path is not None else io.BytesIO(self.data)


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


class _FrameSink:
    """Writes decoded frames straight into the output array, at every slot that wants them.

    Avoids holding a second copy of all frames; repeated plan indices are filled together.
    """

    def __init__(self, plan: SamplingPlan) -> None:
        self.slots: dict[int, list[int]] = {}
        for slot, index in enumerate(plan.indices):
            self.slots.setdefault(index, []).append(slot)
        self.frames: np.ndarray | None = None
        self.timestamps = [math.nan] * plan.num_frames
        self.filled: set[int] = set()

    @property
    def wanted(self) -> list[int]:
        """Distinct planned source indices, ascending."""
        return sorted(self.slots)

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of the output once the first frame arrived."""
        return None if self.frames is None else self.frames.shape[1:3]

    @property
    def missing(self) -> list[int]:
        return [index for index in self.wanted if index not in self.filled]

    def put(self, index: int, rgb: np.ndarray, seconds: float) -> None:
        """Store ``rgb`` (uint8 ``[H, W, 3]``) as source frame ``index`` shown at ``seconds``."""
        if self.frames is None:
            num_slots = len(self.timestamps)
            self.frames = np.empty((num_slots, *rgb.shape), dtype=np.uint8)
        for slot in self.slots[index]:
            self.frames[slot] = rgb
            self.timestamps[slot] = float(seconds)
        self.filled.add(index)


def _import_backend(backend: str) -> Any:
    """Import a backend's module lazily; name the pip package when it is missing."""
    module_name, pip_name = _BACKEND_MODULES[backend]
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"backend={backend!r} needs the {pip_name!r} package, which is not installed; "
            f"install it with `pip install {pip_name}`"
            + ("." if backend == "pyav" else ", or use backend='pyav'.")
        ) from exc


def _is_frames_source(source: object) -> bool:
    if isinstance(source, np.ndarray):
        return True
    return isinstance(source, Sequence) and not isinstance(source, (str, bytes, bytearray, memoryview))


def _as_encoded_source(source: object) -> _EncodedSource:
    """Check that a path or byte string can hold a video at all, before any decoder sees it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise VideoDecodeError("the video bytes are empty (0 bytes); pass the full contents of a video file.")
        return _EncodedSource(path=None, data=data, label=f"<{len(data)} bytes in memory>")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "source must be a path, bytes, a [T, H, W, 3] uint8 array or a list of [H, W, 3] uint8 arrays, "
            f"got {type(source).__name__}"
        )
    path = Path(source)
    if not path.exists():
        raise VideoDecodeError(f"video file not found: {str(path)!r}; check the path (cwd is {os.getcwd()!r}).")
    if not path.is_file():
        raise VideoDecodeError(f"{str(path)!r} is not a regular file; pass the path of a video file.")
    if path.stat().st_size == 0:
        raise VideoDecodeError(
            f"video file {str(path)!r} is empty (0 bytes); the download or copy probably failed, fetch it again."
        )
    return _EncodedSource(path=path, data=None, label=repr(str(path)))


def _as_frame_array(source: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Validate in-memory frames and return them as one uint8 ``[T, H, W, 3]`` array."""
    if isinstance(source, np.ndarray):
        array = source
    else:
        if len(source) == 0:
            raise VideoDecodeError("the frame list is empty; pass at least one [H, W, 3] uint8 frame.")
        arrays = [np.asarray(frame) for frame in source]
        for position, frame in enumerate(arrays):
            if frame.shape != arrays[0].shape:
                raise VideoDecodeError(
                    f"frame {position} has shape {frame.shape} but frame 0 has {arrays[0].shape}; "
                    "resize all frames to one size first."
                )
        array = np.stack(arrays)
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise VideoDecodeError(
            f"in-memory frames must have shape [T, H, W, 3] with T >= 1 (RGB), got {array.shape}; "
            "stack single frames along a new first axis."
        )
    if array.dtype != np.uint8:
        raise VideoDecodeError(
            f"in-memory frames must be uint8 RGB in 0..255, got dtype {array.dtype}; "
            "convert with e.g. (x * 255).round().clip(0, 255).astype(np.uint8)."
        )
    return array


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


def _decode_with_seeks(container: Any, stream: Any, index: _PacketIndex, sink: _FrameSink) -> None:
    """Decode wanted frames, seeking to the keyframe before one whenever that skips decoding.

    Frame ``i`` is identified by its presentation timestamp ``index.pts[i]``, so seeking never
    shifts indices; a frame that does not show up where expected raises :class:`_SeekMiss`.
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
        frame = _advance_to(frames, target)
        seconds = _frame_seconds(frame, stream, (target - index.pts[0]) * float(stream.time_base))
        sink.put(source_index, _to_rgb(frame, sink.frame_size), seconds)
        position = target


def _decode_plan_pyav(
    src: _EncodedSource, plan: SamplingPlan, index: _PacketIndex | None, fps: float, num_threads: int
) -> tuple[_FrameSink, int | None]:
    """Decode the frames of ``plan``; returns the filled sink and, if EOF was hit, the frame count."""
    if index is not None and index.is_seekable and len(index.pts) > max(plan.indices):
        sink = _FrameSink(plan)
        with _open_video_stream(src, num_threads) as (container, stream):
            try:
                _decode_with_seeks(container, stream, index, sink)
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
