"""Split a plan's wanted frames into contiguous segments that parallel decoders finish together.

Role
----
Pure planning for the parallel PyAV decoder (no PyAV, no numpy). Each segment is decoded
by its own decoder, which seeks to the keyframe at or before its first wanted frame and
decodes forward, seeking again whenever a keyframe lies between two wanted frames. The
work of a segment is therefore known from the keyframe positions alone, and
:func:`split_segments` picks the boundaries that minimise the largest segment's work.

Inputs / outputs
----------------
``split_segments(wanted, keyframes, max_segments)`` with ``wanted`` the distinct wanted
frame indices (presentation order, ascending) and ``keyframes`` the keyframes' indices
(ascending) returns a list of at most ``max_segments`` tuples of wanted indices, in order.

Cost model (in "decoded frames")
--------------------------------
Reaching wanted frame ``w`` costs ``w - K(w) + 1 + SEEK_COST`` when the decoder seeks to
``w``'s keyframe ``K(w)`` (at a segment's start, or when ``K(w)`` lies after the previous
wanted frame ``p``), else ``w - p`` (decoding on). Converting a wanted frame to RGB adds
``CONVERT_COST``. A segment's cost is the sum over its frames; it never exceeds that of
a segment containing it (a decoder that starts earlier still has to reach the same last
keyframe before each frame), so the greedy split under a cost limit is optimal and a
binary search over the limit gives the min-max split.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

# A seek (flush the decoder, reposition the demuxer) costs about one decoded frame; an RGB
# conversion with a reused scaler about a quarter of one (720p H.264 on one core: ~0.4 ms
# against 2-9 ms per decoded frame).
SEEK_COST = 1.0
CONVERT_COST = 0.25

# A segment more must shorten the longest one by this share (see split_segments).
MIN_GAIN = 0.1

_NUM_SEARCH_STEPS = 50


def _costs(wanted: Sequence[int], keyframes: Sequence[int]) -> tuple[list[float], list[float]]:
    """Per wanted frame: the cost when it starts a segment, and when it follows the previous one."""
    start_costs, step_costs = [], []
    for position, frame in enumerate(wanted):
        key_position = bisect_right(keyframes, frame) - 1
        keyframe = keyframes[key_position] if key_position >= 0 else 0
        start = frame - keyframe + 1 + SEEK_COST + CONVERT_COST
        start_costs.append(start)
        if position == 0:
            step_costs.append(start)
            continue
        previous = wanted[position - 1]
        step_costs.append(start if keyframe > previous else frame - previous + CONVERT_COST)
    return start_costs, step_costs


def _greedy(start_costs: list[float], step_costs: list[float], limit: float) -> list[int] | None:
    """Segment start positions when each segment is filled up to ``limit``; None if a frame alone exceeds it."""
    starts = [0]
    cost = start_costs[0]
    if cost > limit:
        return None
    for position in range(1, len(start_costs)):
        if cost + step_costs[position] <= limit:
            cost += step_costs[position]
            continue
        cost = start_costs[position]
        if cost > limit:
            return None
        starts.append(position)
    return starts


def segment_costs(wanted: Sequence[int], keyframes: Sequence[int], segments: Sequence[Sequence[int]]) -> list[float]:
    """Modelled cost of each segment (for tests and benchmarks)."""
    costs = []
    for segment in segments:
        start_costs, step_costs = _costs(list(segment), keyframes)
        costs.append(start_costs[0] + sum(step_costs[1:]))
    return costs


def _best_limit(start_costs: list[float], step_costs: list[float], max_segments: int) -> float:
    """Smallest cost limit (to float precision) that the greedy meets with <= ``max_segments`` segments."""
    low, high = 0.0, start_costs[0] + sum(step_costs[1:])  # one segment always fits `high`
    for _ in range(_NUM_SEARCH_STEPS):
        middle = (low + high) / 2
        starts = _greedy(start_costs, step_costs, middle)
        if starts is not None and len(starts) <= max_segments:
            high = middle
        else:
            low = middle
    return high


def split_segments(
    wanted: Sequence[int], keyframes: Sequence[int], max_segments: int, *, min_gain: float = MIN_GAIN
) -> list[tuple[int, ...]]:
    """Split ``wanted`` into at most ``max_segments`` contiguous runs with the smallest largest cost.

    Fewer segments are used when more would lower the largest cost by less than
    ``min_gain`` (a share): every segment re-decodes from its own keyframe, so a split that
    barely shortens the longest one only adds work (e.g. all frames after one keyframe).

    Args:
        wanted: Distinct wanted frame indices, ascending (presentation order).
        keyframes: Keyframe indices, ascending; a decoder can always start at frame 0, so
            frames before the first keyframe count from 0.
        max_segments: Upper bound on the number of segments (decoders), >= 1.
        min_gain: Relative drop of the largest cost that justifies more segments.

    Returns:
        Non-empty tuples of wanted indices whose concatenation is ``wanted``.
    """
    if max_segments < 1:
        raise ValueError(f"max_segments must be >= 1, got {max_segments}")
    wanted = list(wanted)
    if not wanted:
        return []
    if any(b <= a for a, b in zip(wanted, wanted[1:])):
        raise ValueError("wanted frame indices must be distinct and ascending")
    start_costs, step_costs = _costs(wanted, keyframes)
    best = _best_limit(start_costs, step_costs, max_segments)
    # The fewest segments whose largest cost is within min_gain of the best, then balanced.
    num_segments = len(_greedy(start_costs, step_costs, best * (1 + min_gain)) or [0])
    limit = _best_limit(start_costs, step_costs, min(num_segments, max_segments))
    starts = _greedy(start_costs, step_costs, limit) or [0]
    bounds = starts + [len(wanted)]
    return [tuple(wanted[a:b]) for a, b in zip(bounds, bounds[1:])]
