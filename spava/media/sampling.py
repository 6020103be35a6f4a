"""Frame-sampling contract: which source frames of a video the model sees, and when.

Role
----
Pure planning (no PyAV, no torch, no numpy). :class:`FrameSampling` says *what* to
sample; :func:`plan_frame_sampling` turns it plus the video's frame count and frame
rate into a :class:`SamplingPlan` (source-frame indices and their timestamps). The
decoders in :mod:`spava.media.video` only decode what the plan names, and admission
checks can run the plan on probed metadata before any decoding or GPU work.

Inputs / outputs
----------------
``plan_frame_sampling(N, F, sampling)`` with ``N`` source frames at ``F`` frames per
second returns ``SamplingPlan(indices, timestamps, effective_fps, second_per_grid)``.

The contract
------------
1. **Clip.** Source frame ``i`` is shown during ``[i/F, (i+1)/F)``; the video lasts
   ``N/F`` seconds. The clip is the window ``[start_time, end_time)`` (defaults: the
   whole video; ``end_time`` past the end is cut to ``N/F``). It holds every source
   frame whose display interval overlaps the window, so it is never empty. Call its
   size ``n_clip``; its duration is ``n_clip / F``. A ``start_time`` at or past the
   end of the video is an error.
2. **Count** (how many frames the plan returns).

   * ``fps`` mode (the default, ``fps=2.0``): ``count = clip duration * fps``,
     clamped to ``[min_frames, max_frames]``, then to ``n_clip`` (never more frames
     than the clip has), then rounded DOWN to a multiple of ``frame_multiple``, and
     raised to ``frame_multiple`` if that left fewer. So ``max_frames`` is the cap on
     long videos: a 2-hour video at ``fps=2`` gives ``max_frames`` (768) frames spread
     evenly, i.e. a lower *effective* fps; ``min_frames`` lifts short clips (a 1 s
     clip at 30 fps gives 4 frames, not 2). A ``min_frames``/``max_frames`` that is
     not a multiple of ``frame_multiple`` is effectively rounded down.
   * ``num_frames`` mode (``fps=None, num_frames=K``): ``count = K`` exactly,
     whatever the clip length; ``min_frames`` is ignored. ``K`` must be a multiple
     of ``frame_multiple`` and at most ``max_frames`` (checked when the
     :class:`FrameSampling` is built). ``fps`` and ``num_frames`` are mutually
     exclusive; since ``fps`` defaults to 2.0, pass ``fps=None`` with ``num_frames``.
3. **Indices.** If ``count <= n_clip``: ``round(linspace(first, last, count))`` over
   the clip's first and last source frames (round half up) -- evenly spaced, strictly
   increasing, both ends included. If ``count > n_clip`` (a clip with fewer source
   frames than ``frame_multiple``, or ``num_frames`` above the clip's size): every
   clip frame once, then the **last frame repeated** up to ``count`` -- the same
   padding Qwen2.5-VL's processor applies, rather than failing.
4. **Timing.** ``timestamps[k] = indices[k] / F`` seconds (nominal; decoders report
   the frames' real presentation times). ``effective_fps = count / (n_clip / F)``,
   the same sampled-fps formula Qwen2.5-VL uses, and ``second_per_grid =
   frame_multiple / effective_fps`` -- seconds per temporal patch, which Qwen2.5-VL
   takes as ``second_per_grid_ts`` for its temporal position ids.

``min_pixels`` / ``max_pixels`` are not used here; they ride along for the image
processor (spatial resizing). Plans are deterministic: same inputs, same plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Qwen2.5-VL's video defaults (qwen-vl-utils): 128 and 768 patches of 28x28 pixels.
DEFAULT_MIN_PIXELS = 128 * 28 * 28
DEFAULT_MAX_PIXELS = 768 * 28 * 28

# Slack for float products such as 0.375 s * 8 fps = 2.9999999999999996 frames.
_FRAME_EPS = 1e-6


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_int(name: str, value: object, minimum: int, hint: str) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"FrameSampling.{name} must be an integer >= {minimum}, got {value!r}; {hint}")


@dataclass(frozen=True)
class FrameSampling:
    """What to sample from a video (see the module docstring for the full contract).

    Attributes:
        fps: Target sampling rate in frames per second, or None to use ``num_frames``.
        num_frames: Exact number of frames to return (needs ``fps=None``).
        min_frames: Lower bound on the frame count in ``fps`` mode.
        max_frames: Upper bound on the frame count in both modes.
        start_time: Clip start in seconds (None: start of the video).
        end_time: Clip end in seconds, exclusive (None: end of the video).
        frame_multiple: The count is a multiple of this (Qwen's temporal patch, 2).
        min_pixels: Smallest frame area (H*W) the image processor may resize to.
        max_pixels: Largest frame area (H*W) the image processor may resize to.
    """

    fps: float | None = 2.0
    num_frames: int | None = None
    min_frames: int = 4
    max_frames: int = 768
    start_time: float | None = None
    end_time: float | None = None
    frame_multiple: int = 2
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        self._check_mode()
        self._check_frame_bounds()
        self._check_window()
        self._check_pixels()

    def _check_mode(self) -> None:
        if self.fps is not None and self.num_frames is not None:
            raise ValueError(
                f"FrameSampling.fps={self.fps!r} and FrameSampling.num_frames={self.num_frames!r} are "
                "mutually exclusive; fps defaults to 2.0, so pass fps=None together with "
                f"num_frames={self.num_frames!r} for an exact frame count."
            )
        if self.fps is None and self.num_frames is None:
            raise ValueError(
                "FrameSampling needs fps or num_frames, but both are None; "
                "set fps (e.g. fps=2.0) for a rate or num_frames (e.g. num_frames=16) for an exact count."
            )
        if self.fps is not None and (not _is_number(self.fps) or self.fps <= 0):
            raise ValueError(
                f"FrameSampling.fps must be a positive, finite number of frames per second, got {self.fps!r}; "
                "use e.g. fps=2.0, or fps=None with num_frames."
            )

    def _check_frame_bounds(self) -> None:
        _require_int("frame_multiple", self.frame_multiple, 1, "Qwen2.5-VL uses frame_multiple=2.")
        _require_int("min_frames", self.min_frames, 1, "use e.g. min_frames=4.")
        _require_int("max_frames", self.max_frames, 1, "use e.g. max_frames=768.")
        # min_frames is ignored when num_frames is set, so it may then exceed max_frames.
        if self.num_frames is None and self.min_frames > self.max_frames:
            raise ValueError(
                f"FrameSampling.min_frames={self.min_frames} is larger than max_frames={self.max_frames}; "
                "lower min_frames or raise max_frames."
            )
        if self.max_frames < self.frame_multiple:
            raise ValueError(
                f"FrameSampling.max_frames={self.max_frames} is smaller than frame_multiple="
                f"{self.frame_multiple}; raise max_frames to at least {self.frame_multiple}."
            )
        if self.num_frames is not None:
            self._check_num_frames()

    def _check_num_frames(self) -> None:
        _require_int("num_frames", self.num_frames, 1, "use e.g. num_frames=16.")
        multiple = self.frame_multiple
        if self.num_frames % multiple:
            lower = self.num_frames // multiple * multiple
            nearby = " or ".join(f"num_frames={n}" for n in (lower, lower + multiple) if n >= multiple)
            raise ValueError(
                f"FrameSampling.num_frames={self.num_frames} must be a multiple of frame_multiple={multiple} "
                f"(the model's temporal patch); use {nearby}."
            )
        if self.num_frames > self.max_frames:
            raise ValueError(
                f"FrameSampling.num_frames={self.num_frames} exceeds max_frames={self.max_frames}; "
                f"lower num_frames or raise max_frames to at least {self.num_frames}."
            )

    def _check_window(self) -> None:
        start, end = self.start_time, self.end_time
        if start is not None and (not _is_number(start) or start < 0):
            raise ValueError(
                f"FrameSampling.start_time must be a finite number of seconds >= 0 or None, got {start!r}; "
                "use None to start at the beginning of the video."
            )
        if end is not None and (not _is_number(end) or end <= 0):
            raise ValueError(
                f"FrameSampling.end_time must be a finite number of seconds > 0 or None, got {end!r}; "
                "use None to run to the end of the video."
            )
        if start is not None and end is not None and start >= end:
            raise ValueError(
                f"FrameSampling.start_time={start!r} must be smaller than end_time={end!r}; "
                "swap them or widen the window."
            )

    def _check_pixels(self) -> None:
        _require_int("min_pixels", self.min_pixels, 1, f"Qwen2.5-VL's default is {DEFAULT_MIN_PIXELS}.")
        _require_int("max_pixels", self.max_pixels, 1, f"Qwen2.5-VL's default is {DEFAULT_MAX_PIXELS}.")
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"FrameSampling.min_pixels={self.min_pixels} is larger than max_pixels={self.max_pixels}; "
                "lower min_pixels or raise max_pixels."
            )


@dataclass(frozen=True)
class SamplingPlan:
    """Which source frames to decode, in output order.

    Attributes:
        indices: Source-frame indices, length T (the output frame count); non-decreasing,
            with repeats only when the clip is shorter than T (last frame repeated).
        timestamps: Nominal time of each planned frame in seconds (``index / source_fps``), length T.
        effective_fps: Sampled frames per second of clip time, ``T / clip_duration``.
        second_per_grid: Seconds per temporal patch, ``frame_multiple / effective_fps``.
    """

    indices: tuple[int, ...]
    timestamps: tuple[float, ...]
    effective_fps: float
    second_per_grid: float

    @property
    def num_frames(self) -> int:
        """Number of frames T the plan returns (repeats included)."""
        return len(self.indices)


def _clip_frame_range(num_source_frames: int, source_fps: float, sampling: FrameSampling) -> tuple[int, int]:
    """Return ``(first, last)`` source indices (inclusive) of frames overlapping the window."""
    duration = num_source_frames / source_fps
    start = 0.0 if sampling.start_time is None else float(sampling.start_time)
    end = duration if sampling.end_time is None else min(float(sampling.end_time), duration)
    if start >= duration:
        raise ValueError(
            f"FrameSampling.start_time={start!r} s is at or beyond the end of the video "
            f"({duration:.3f} s, {num_source_frames} frames at {source_fps:g} fps); "
            "use a smaller start_time, or None to start at the beginning."
        )
    first = math.floor(start * source_fps + _FRAME_EPS)
    last = math.ceil(end * source_fps - _FRAME_EPS) - 1
    last = min(max(last, first), num_source_frames - 1)
    return first, last


def _frame_count(num_clip_frames: int, clip_duration: float, sampling: FrameSampling) -> int:
    """Number of output frames for a clip of ``num_clip_frames`` frames (contract step 2)."""
    multiple = sampling.frame_multiple
    if sampling.num_frames is not None:
        return sampling.num_frames
    count = math.floor(clip_duration * sampling.fps + _FRAME_EPS)
    count = min(max(count, sampling.min_frames), sampling.max_frames, num_clip_frames)
    count = count // multiple * multiple
    return max(count, multiple)


def _uniform_indices(first: int, last: int, count: int) -> tuple[int, ...]:
    """``count`` indices evenly spread over ``[first, last]``; repeats ``last`` if the range is short."""
    num_available = last - first + 1
    if count > num_available:
        return tuple(range(first, last + 1)) + (last,) * (count - num_available)
    if count == 1:
        return (first,)
    step = (last - first) / (count - 1)
    # Round half up (not banker's rounding) so plans are easy to reason about.
    return tuple(first + math.floor(k * step + 0.5) for k in range(count))


def plan_frame_sampling(num_source_frames: int, source_fps: float, sampling: FrameSampling) -> SamplingPlan:
    """Plan which source frames to decode (see the module docstring for the rules).

    Args:
        num_source_frames: Frames in the video, N >= 1.
        source_fps: Source frame rate F > 0 (frames per second).
        sampling: What to sample.

    Returns:
        A :class:`SamplingPlan` with T = ``plan.num_frames`` indices in ``[0, N)``.

    Raises:
        ValueError: No frames, a non-positive frame rate, or a window starting past the end.
    """
    if not isinstance(sampling, FrameSampling):
        raise TypeError(f"sampling must be a FrameSampling, got {type(sampling).__name__}")
    if not _is_int(num_source_frames) or num_source_frames < 1:
        raise ValueError(
            f"num_source_frames must be an integer >= 1, got {num_source_frames!r}: the video has no frames "
            "to sample; check that the file holds a decodable video stream."
        )
    if not _is_number(source_fps) or source_fps <= 0:
        raise ValueError(
            f"source_fps must be a positive, finite frame rate, got {source_fps!r}: the video's duration "
            "is zero or unknown; re-encode it with a constant frame rate (e.g. ffmpeg -r 30)."
        )
    first, last = _clip_frame_range(num_source_frames, float(source_fps), sampling)
    num_clip_frames = last - first + 1
    clip_duration = num_clip_frames / source_fps
    count = _frame_count(num_clip_frames, clip_duration, sampling)
    indices = _uniform_indices(first, last, count)
    effective_fps = count / clip_duration
    return SamplingPlan(
        indices=indices,
        timestamps=tuple(index / source_fps for index in indices),
        effective_fps=effective_fps,
        second_per_grid=sampling.frame_multiple / effective_fps,
    )
