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
* :class:`VideoDecodeError`, :class:`VideoInfo`, :class:`DecodedVideo`, ``VideoSource``,
  ``BACKENDS``, ``DEFAULT_FRAMES_FPS`` -- public, re-exported by :mod:`spava.media.video`.
* ``_EncodedSource`` (a checked path or byte string, from :func:`_as_encoded_source`)
  and a uint8 ``[T, H, W, 3]`` array (from :func:`_as_frame_array`) for the decoders.
* ``_FrameSink``: the output buffer every backend writes its planned frames into.
* ``_import_backend``: lazy backend import with an ImportError naming the pip package.
"""

from __future__ import annotations

import importlib
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
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
