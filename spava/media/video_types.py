"""Shared types of the video decoders: errors, result dataclasses, constants, source checks.

Role
----
The vocabulary every decoding module shares, so that :mod:`spava.media.video` (the
public API), :mod:`spava.media.pyav_decoder` and :mod:`spava.media.other_decoders`
can depend on it without depending on each other. It imports nothing from those
modules and no decoding library (backends are imported lazily by
:func:`_import_backend`, only when a decoder runs).

Inputs
------
A raw video source as the caller passed it to ``decode_video``/``probe_video``: a path,
encoded bytes, or in-memory frames (see :mod:`spava.media.video`).

Outputs
-------
* :class:`VideoDecodeError`, :class:`DecodeCancelled`, :class:`VideoInfo`,
  :class:`DecodedVideo`, :class:`DecodeReport`, ``VideoSource``, ``BACKENDS``,
  ``DEFAULT_FRAMES_FPS`` -- public, re-exported by :mod:`spava.media.video`.
* ``_EncodedSource`` (a checked path or byte string, from :func:`_as_encoded_source`)
  and a uint8 ``[T, H, W, 3]`` array (from :func:`_as_frame_array`) for the decoders.
* ``_SlotWriter``: writes every backend's planned frames into the caller's output array.
* ``_import_backend``: lazy backend import with an ImportError naming the pip package.
"""

from __future__ import annotations

import importlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

import numpy as np

from spava.media.sampling import SamplingPlan

VideoSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Sequence[np.ndarray]]

BACKENDS = ("auto", "pyav", "decord", "torchcodec")

# Frame rate assumed for in-memory frames when the sampling does not name one.
DEFAULT_FRAMES_FPS = 2.0

# Module to import and pip package to suggest, per backend (read-only).
_BACKEND_MODULES = MappingProxyType(
    {"pyav": ("av", "av"), "decord": ("decord", "decord"), "torchcodec": ("torchcodec.decoders", "torchcodec")}
)

_REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p OUTPUT.mp4`"


class VideoDecodeError(ValueError):
    """A video source could not be read; the message says why and what to do."""


class DecodeCancelled(Exception):
    """``should_stop()`` asked a decode to stop (e.g. its request was cancelled); not a bad input."""


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of a video stream, read without decoding more than its first frame.

    Attributes:
        width: Frame width in pixels as displayed (after ``rotation``).
        height: Frame height in pixels as displayed (after ``rotation``).
        num_frames: Number of frames that exist (counted from the packets; estimated when
            ``is_num_frames_estimated``).
        fps: Average frame rate in frames per second.
        duration: Seconds the frames really cover (first start to last end).
        codec: FFmpeg codec name (e.g. ``"h264"``), or ``"raw"`` for in-memory frames.
        is_num_frames_estimated: True when ``num_frames`` is ``round(duration * fps)``
            because nothing gave a frame count.
        rotation: Degrees (0, 90, 180, 270) by which decoded pictures are turned clockwise
            for display (the stream's display matrix, as phones write it); ``width`` and
            ``height`` already include it.
        container_format: FFmpeg demuxer name (e.g. ``"mov,mp4,m4a,3gp,3g2,mj2"``).
        is_vfr: True when the frames' real start times stray from ``i / fps`` (variable
            frame rate, or a container whose rate is wrong); plans are then made by time.
        frame_times: When ``is_vfr``: the ``num_frames + 1`` edges of the frames' display
            intervals in seconds (see :func:`~spava.media.sampling.plan_frame_sampling`);
            else None.
        container_duration: Duration in seconds the container declares for the video
            stream (None if it declares none); more than ``duration`` means a truncated file.
        container_num_frames: Frame count the container declares (None if it declares none).
        probe_seconds: Seconds the probe took (timing only; not compared).
        index_seconds: Part of ``probe_seconds`` spent demuxing the packet index.
        packet_index: The packet index the PyAV decoder seeks with (``pyav_probe.PacketIndex``;
            None for in-memory frames). Not compared, not shown.
    """

    width: int
    height: int
    num_frames: int
    fps: float
    duration: float
    codec: str
    is_num_frames_estimated: bool = False
    rotation: int = 0
    container_format: str = ""
    is_vfr: bool = False
    frame_times: tuple[float, ...] | None = field(default=None, repr=False)
    container_duration: float | None = None
    container_num_frames: int | None = None
    probe_seconds: float = field(default=0.0, compare=False)
    index_seconds: float = field(default=0.0, compare=False)
    packet_index: Any = field(default=None, repr=False, compare=False)

    @property
    def decodable_fraction(self) -> float:
        """Share of the declared duration that the frames cover (1.0 when nothing is declared), capped at 1."""
        if not self.container_duration or self.container_duration <= 0:
            return 1.0
        return min(1.0, self.duration / self.container_duration)


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
        report: What the decode did (timings, warnings); None for the decord / torchcodec backends.
    """

    frames: np.ndarray
    timestamps: list[float]
    source_fps: float
    num_source_frames: int
    duration: float
    plan: SamplingPlan
    backend: str
    report: DecodeReport | None = None


@dataclass
class DecodeReport:
    """What :func:`~spava.media.video.decode_video_into` did.

    Attributes:
        timestamps: Real presentation time in seconds of each output frame ``out[k]``, length T.
        num_decoded_frames: Frames the decoders produced, including those decoded only to
            reach a wanted one (the work done; T counts only the wanted ones).
        num_workers: Decoders that ran in parallel.
        probe_seconds: Seconds of the probe that produced the layout (also when the caller ran it).
        index_seconds: Part of ``probe_seconds`` spent demuxing the packet index.
        decode_seconds: Wall-clock seconds of decoding and converting into ``out``.
        warnings: Human-readable notes on what was not as declared (a truncated file, a
            picture size that changed mid-stream), for logs and for the user.
        decoder: ``"pyav"``, ``"frames"`` (in-memory input), ``"decord"`` or ``"torchcodec"``.
        decoded_fraction: Share of the container's declared duration that the frames cover.
        num_seek_fallbacks: Segments redone from an earlier keyframe or the start because a
            seek did not land where the packet index said (slower, never wrong).
    """

    timestamps: list[float]
    num_decoded_frames: int
    num_workers: int
    probe_seconds: float
    index_seconds: float
    decode_seconds: float
    warnings: list[str]
    decoder: str
    decoded_fraction: float = 1.0
    num_seek_fallbacks: int = 0


@dataclass(frozen=True)
class _EncodedSource:
    """An encoded video: a file path or bytes in memory, with a label for messages."""

    path: Path | None
    data: bytes | None
    label: str

    def open_arg(self) -> str | io.BytesIO:
        """What FFmpeg-based readers open: the path, or a fresh in-memory file."""
        return str(self.path) if self.path is not None else io.BytesIO(self.data)


class _SlotWriter:
    """Writes decoded frames into the caller's ``out [T, H, W, 3]`` at every plan slot that wants them.

    Slots of one source frame are contiguous (plans are non-decreasing), so each frame fills
    ``out[lo:hi]`` and then reports ``on_frames(lo, hi)``. Frames arrive in the stored
    orientation and are turned by ``rotation`` degrees clockwise on the way in. Workers of
    one decode write disjoint slots, so they need no lock.
    """

    def __init__(self, plan: SamplingPlan, out: np.ndarray, rotation: int = 0, on_frames: Any = None) -> None:
        self.slot_ranges: dict[int, tuple[int, int]] = {}
        for slot, index in enumerate(plan.indices):
            lo, _ = self.slot_ranges.get(index, (slot, slot))
            self.slot_ranges[index] = (lo, slot + 1)
        self.out = out
        self.turns = (rotation // 90) % 4
        self.on_frames = on_frames
        self.timestamps = [math.nan] * plan.num_frames
        self.filled: set[int] = set()

    @property
    def wanted(self) -> list[int]:
        """Distinct planned source indices, ascending."""
        return sorted(self.slot_ranges)

    @property
    def stored_size(self) -> tuple[int, int]:
        """``(height, width)`` of a decoded picture before rotation."""
        height, width = self.out.shape[1:3]
        return (width, height) if self.turns % 2 else (height, width)

    @property
    def missing(self) -> list[int]:
        return [index for index in self.wanted if index not in self.filled]

    def put(self, index: int, rgb: np.ndarray, seconds: float) -> None:
        """Store ``rgb`` (uint8 ``[h, w, 3]``, stored orientation) as source frame ``index`` shown at ``seconds``."""
        lo, hi = self.slot_ranges[index]
        # np.rot90 turns counter-clockwise for positive k: a clockwise quarter turn is k = -1.
        np.copyto(self.out[lo], np.rot90(rgb, -self.turns) if self.turns else rgb)
        if hi - lo > 1:
            self.out[lo + 1 : hi] = self.out[lo]
        self.timestamps[lo:hi] = [float(seconds)] * (hi - lo)
        self.filled.add(index)
        if self.on_frames is not None:
            self.on_frames(lo, hi)


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
