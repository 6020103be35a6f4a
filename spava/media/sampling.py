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
``plan_frame_sampling(N, F, sampling, frame_times=E)`` plans by presentation time instead
(variable frame rate, rule 5): ``E`` holds the ``N + 1`` edges of the frames' display
intervals in seconds. :func:`effective_max_pixels` gives the per-frame pixel cap that
qwen-vl-utils derives from a total pixel budget (rule 6).

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
4. **Timing.** ``timestamps[k] = indices[k] / F`` seconds. ``effective_fps = count /
   (n_clip / F)``, the same sampled-fps formula Qwen2.5-VL uses, and ``second_per_grid =
   frame_multiple / effective_fps`` -- seconds per temporal patch, which Qwen2.5-VL
   takes as ``second_per_grid_ts`` for its temporal position ids.
5. **Presentation time (variable frame rate).** Rules 1-4 assume frame ``i`` starts at
   ``i/F``. When the decoder finds that the real presentation times stray from that
   (a variable-frame-rate stream, or a container whose rate is wrong), it passes the
   real display intervals as ``frame_times`` (frame ``i`` is shown during
   ``[frame_times[i], frame_times[i+1])``) and the plan is made in time instead:

   * the clip holds the frames whose real display interval overlaps the window, and
     its duration is the real time from the first one's start to the last one's end;
   * the count follows rule 2 with that duration;
   * if ``count <= n_clip``, ``count`` **target times** are spread evenly from the
     middle of the first clip frame's display interval to the middle of the last
     one's, and each slot takes the frame **displayed at its target time** (a target
     exactly on a frame boundary takes the later frame). A frame shown for longer
     than the target spacing (a freeze, a slide) is therefore picked more than once:
     the plan then has repeated indices, which is what the viewer saw. Otherwise
     rule 3's padding applies;
   * ``timestamps`` are the real start times of the picked frames, ``effective_fps
     = count / real clip duration`` and ``second_per_grid`` follows from it, so the
     temporal position ids reflect the real spacing.

   For a constant-rate stream (``frame_times[i] == i/F``) this gives the same plan as
   rules 1-4 (the midpoint of frame ``j`` is ``(j + 0.5)/F``, so "displayed at the
   target" is rule 3's round-half-up); decoders pass ``frame_times`` only when the
   times stray, so constant-rate plans never depend on float ties.
6. **Pixel budget.** ``min_pixels`` / ``max_pixels`` / ``total_pixels`` are not used for
   planning; they ride along for the image processor (spatial resizing).
   :func:`effective_max_pixels` turns them into the per-frame cap qwen-vl-utils would
   use for a plan of ``count`` frames (see its docstring for the reference rule and
   where spava's defaults differ).

Plans are deterministic: same inputs, same plan.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, fields

from spava.media.pixel_budget import effective_max_pixels  # noqa: F401 -- re-exported: rule 6 of this contract

# Qwen2.5-VL's video defaults (qwen-vl-utils): 128 and 768 patches of 28x28 pixels per frame,
# and a budget for all frames together of 90% of 128000 such patches (see effective_max_pixels).
DEFAULT_MIN_PIXELS = 128 * 28 * 28
DEFAULT_MAX_PIXELS = 768 * 28 * 28
DEFAULT_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)

# Slack for float products such as 0.375 s * 8 fps = 2.9999999999999996 frames.
_FRAME_EPS = 1e-6
# The same slack for presentation times in seconds (rule 5): far below any frame duration,
# far above float noise on times of hours.
_TIME_EPS = 1e-7


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
        total_pixels: Pixel budget of all frames together, which lowers the per-frame cap of
            long plans (:func:`effective_max_pixels`); None: no total budget.
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
    total_pixels: int | None = DEFAULT_TOTAL_PIXELS

    def __post_init__(self) -> None:
        self._check_mode()
        self._check_frame_bounds()
        self._check_window()
        self._check_pixels()

    @classmethod
    def from_settings(cls, settings: object) -> "FrameSampling":
        """The sampling that `settings` asks for: any object with (some of) this class's field names as
        attributes, such as the `video` config section or a request's `VideoOptions`; fields it lacks
        keep their defaults. ValueError naming the field when a value breaks the contract."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)})

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
        if self.total_pixels is not None:
            hint = f"qwen-vl-utils' default is {DEFAULT_TOTAL_PIXELS}, None for no budget."
            _require_int("total_pixels", self.total_pixels, 1, hint)


@dataclass(frozen=True)
class SamplingPlan:
    """Which source frames to decode, in output order.

    Attributes:
        indices: Source-frame indices, length T (the output frame count); non-decreasing,
            with repeats only when the clip is shorter than T (last frame repeated) or, when
            planned by presentation time, a frame is displayed across several target times.
        timestamps: Start time of each planned frame in seconds, length T: ``index / source_fps``,
            or the real presentation time when planned with ``frame_times`` (rule 5).
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


def plan_frame_sampling(
    num_source_frames: int,
    source_fps: float,
    sampling: FrameSampling,
    *,
    frame_times: Sequence[float] | None = None,
) -> SamplingPlan:
    """Plan which source frames to decode (see the module docstring for the rules).

    Args:
        num_source_frames: Frames in the video, N >= 1.
        source_fps: Source frame rate F > 0 (frames per second); with ``frame_times`` only
            used in messages.
        sampling: What to sample.
        frame_times: None (frame ``i`` starts at ``i / F``), or the ``N + 1`` edges of the
            frames' display intervals in seconds, strictly increasing: frame ``i`` is shown
            during ``[frame_times[i], frame_times[i + 1])``. Plans by presentation time (rule 5).

    Returns:
        A :class:`SamplingPlan` with T = ``plan.num_frames`` indices in ``[0, N)``.

    Raises:
        ValueError: No frames, a non-positive frame rate, bad ``frame_times``, or a window
            starting past the end.
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
    if frame_times is not None:
        return _plan_by_time(_checked_edges(frame_times, num_source_frames), sampling)
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


def _checked_edges(frame_times: Sequence[float], num_source_frames: int) -> tuple[float, ...]:
    edges = tuple(float(t) for t in frame_times)
    if len(edges) != num_source_frames + 1:
        raise ValueError(
            f"frame_times must hold the N + 1 = {num_source_frames + 1} edges of the frames' display intervals "
            f"(start of each frame, then the end of the last one), got {len(edges)} values."
        )
    if not all(math.isfinite(t) for t in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError("frame_times must be finite and strictly increasing (seconds); sort them and drop duplicates.")
    return edges


def _time_clip_range(edges: tuple[float, ...], sampling: FrameSampling) -> tuple[int, int]:
    """``(first, last)`` source indices (inclusive) of frames whose real display interval overlaps the window."""
    num_frames = len(edges) - 1
    start = 0.0 if sampling.start_time is None else float(sampling.start_time)
    end = edges[-1] if sampling.end_time is None else min(float(sampling.end_time), edges[-1])
    if start >= edges[-1] - _TIME_EPS:
        raise ValueError(
            f"FrameSampling.start_time={start!r} s is at or beyond the end of the video "
            f"({edges[-1]:.3f} s, {num_frames} frames); use a smaller start_time, or None to start at the beginning."
        )
    first = min(max(bisect_right(edges, start + _TIME_EPS) - 1, 0), num_frames - 1)
    last = min(max(bisect_left(edges, end - _TIME_EPS) - 1, first), num_frames - 1)
    return first, last


def _plan_by_time(edges: tuple[float, ...], sampling: FrameSampling) -> SamplingPlan:
    """Rule 5: uniform target times over the clip, each taking the frame displayed then."""
    first, last = _time_clip_range(edges, sampling)
    num_clip_frames = last - first + 1
    clip_duration = edges[last + 1] - edges[first]
    count = _frame_count(num_clip_frames, clip_duration, sampling)
    if count > num_clip_frames or count == 1:
        indices = _uniform_indices(first, last, count)
    else:
        start_mid = (edges[first] + edges[first + 1]) / 2
        step = ((edges[last] + edges[last + 1]) / 2 - start_mid) / (count - 1)
        # The frame displayed at time t is the last one starting at or before t.
        indices = tuple(
            min(max(bisect_right(edges, start_mid + k * step + _TIME_EPS) - 1, first), last) for k in range(count)
        )
    effective_fps = count / clip_duration
    return SamplingPlan(
        indices=indices,
        timestamps=tuple(edges[index] for index in indices),
        effective_fps=effective_fps,
        second_per_grid=sampling.frame_multiple / effective_fps,
    )
