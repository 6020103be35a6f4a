"""Tests for the pure pieces of parallel decoding: segment split and progress tracking."""

from __future__ import annotations

import itertools
import random
import threading

import pytest

from spava.media.decode_segments import segment_costs, split_segments
from spava.media.progress import DecodeProgress


def _partitions(items: list[int], num_parts: int):
    """Every split of ``items`` into 1..num_parts contiguous non-empty runs (brute force)."""
    for num_cuts in range(num_parts):
        for cuts in itertools.combinations(range(1, len(items)), num_cuts):
            bounds = (0, *cuts, len(items))
            yield [tuple(items[a:b]) for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("seed", range(12))
def test_split_is_min_max_optimal_against_brute_force(seed):
    rng = random.Random(seed)
    num_frames = rng.randint(20, 200)
    keyframes = sorted({0} | {rng.randrange(num_frames) for _ in range(rng.randint(0, 6))})
    wanted = sorted(rng.sample(range(num_frames), rng.randint(1, 9)))
    max_segments = rng.randint(1, 4)
    segments = split_segments(wanted, keyframes, max_segments, min_gain=0.0)
    assert [i for segment in segments for i in segment] == wanted
    assert 1 <= len(segments) <= max_segments and all(segments)
    best = min(max(segment_costs(wanted, keyframes, p)) for p in _partitions(wanted, max_segments))
    assert max(segment_costs(wanted, keyframes, segments)) == pytest.approx(best, rel=1e-9)


def test_split_follows_keyframes():
    # 64 frames of 768 with keyframes every 250: at most one decoder per group of pictures pays off.
    wanted = [round(i * 767 / 63) for i in range(64)]
    keyframes = [0, 250, 500, 750]
    for max_segments in (2, 4, 8):
        segments = split_segments(wanted, keyframes, max_segments)
        assert len(segments) <= min(max_segments, 4)
        costs = segment_costs(wanted, keyframes, segments)
        assert max(costs) < segment_costs(wanted, keyframes, [tuple(wanted)])[0] / 1.5


def test_no_split_without_keyframes_to_start_from():
    # Every segment would decode from frame 0: splitting only adds work.
    wanted = list(range(0, 96, 6))
    assert split_segments(wanted, [0], 4) == [tuple(wanted)]


def test_split_rejects_bad_input():
    with pytest.raises(ValueError, match="ascending"):
        split_segments([3, 3], [0], 2)
    with pytest.raises(ValueError, match="max_segments"):
        split_segments([1], [0], 0)
    assert split_segments([], [0], 2) == []


def test_progress_prefix_in_any_order():
    prefixes = []
    progress = DecodeProgress(10, on_prefix=prefixes.append)
    for start, stop in [(4, 6), (0, 1), (8, 10), (1, 4), (6, 8)]:
        progress(start, stop)
    assert (progress.num_ready, progress.num_written) == (10, 10)
    assert prefixes == [1, 6, 10]
    progress(2, 3)  # writing a slot twice is harmless
    assert progress.num_written == 10
    with pytest.raises(ValueError, match="outside"):
        progress(9, 11)


def test_progress_wait_for_and_close():
    progress = DecodeProgress(4)
    results = []
    waiter = threading.Thread(target=lambda: results.append(progress.wait_for(2, timeout=30)))
    waiter.start()
    progress(1, 2)
    progress(0, 1)
    waiter.join(timeout=30)
    assert results == [True]
    assert progress.wait_for(4, timeout=0.01) is False
    closing = threading.Thread(target=lambda: results.append(progress.wait_for(4, timeout=30)))
    closing.start()
    progress.close()  # the decode failed: waiters wake up and see that the slots are not there
    closing.join(timeout=30)
    assert results == [True, False]
