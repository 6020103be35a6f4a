"""Tests for spava.media.sampling: the FrameSampling spec and plan_frame_sampling rules."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest

from spava.media import sampling as sampling_module
from spava.media.sampling import FrameSampling, SamplingPlan, plan_frame_sampling

# (id, num_source_frames, source_fps, FrameSampling kwargs, expected indices, expected effective fps)
PLAN_CASES = [
    ("fps_basic", 16, 8.0, {}, (0, 5, 10, 15), 2.0),
    ("fps_one_per_second", 10, 1.0, {"fps": 1.0}, (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), 1.0),
    ("min_frames_lifts_short_clip", 30, 30.0, {}, (0, 10, 19, 29), 4.0),
    ("clamped_to_clip_frames", 3, 1.0, {}, (0, 2), 2 / 3),
    ("rounded_down_to_multiple", 7, 1.0, {"fps": 1.0}, (0, 1, 2, 4, 5, 6), 6 / 7),
    ("frame_multiple_4", 50, 10.0, {"frame_multiple": 4}, (0, 7, 14, 21, 28, 35, 42, 49), 1.6),
    ("half_up_rounding", 4, 1.0, {"fps": 0.75, "min_frames": 1, "frame_multiple": 1}, (0, 2, 3), 0.75),
    ("num_frames_exact", 100, 25.0, {"fps": None, "num_frames": 6}, (0, 20, 40, 59, 79, 99), 1.5),
    ("num_frames_pads_last", 3, 30.0, {"fps": None, "num_frames": 6}, (0, 1, 2, 2, 2, 2), 60.0),
    ("single_frame_repeated", 1, 8.0, {}, (0, 0), 16.0),
    ("window", 300, 30.0, {"start_time": 2.0, "end_time": 4.0}, (60, 80, 99, 119), 2.0),
    ("window_end_past_video", 80, 8.0, {"start_time": 8.0, "end_time": 100.0}, (64, 69, 74, 79), 2.0),
    ("window_inside_one_frame", 16, 8.0, {"start_time": 0.1, "end_time": 0.2}, (0, 1), 8.0),
    ("start_on_frame", 16, 8.0, {"start_time": 0.375, "fps": 8.0}, (3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15), 96 / 13),
    # 0.29 s * 100 fps is 28.999... in floating point: the clip must still start at frame 29.
    ("float_boundary", 100, 100.0, {"start_time": 0.29, "end_time": 0.35, "fps": 4.0}, (29, 31, 32, 34), 4 / 0.06),
]


@pytest.mark.parametrize(
    "num_source_frames, source_fps, kwargs, expected_indices, expected_fps",
    [case[1:] for case in PLAN_CASES],
    ids=[case[0] for case in PLAN_CASES],
)
def test_plan_table(num_source_frames, source_fps, kwargs, expected_indices, expected_fps):
    sampling = FrameSampling(**kwargs)
    plan = plan_frame_sampling(num_source_frames, source_fps, sampling)
    assert plan.indices == expected_indices
    assert plan.num_frames == len(expected_indices)
    assert plan.effective_fps == pytest.approx(expected_fps)
    assert plan.second_per_grid == pytest.approx(sampling.frame_multiple / expected_fps)
    assert plan.timestamps == pytest.approx([index / source_fps for index in expected_indices])


@pytest.mark.parametrize("max_frames", [4, 32, 768])
def test_long_video_capped_by_max_frames(max_frames):
    # Two hours at 30 fps and fps=2 would be 14400 frames: max_frames caps it, evenly spread.
    plan = plan_frame_sampling(2 * 3600 * 30, 30.0, FrameSampling(max_frames=max_frames))
    assert plan.num_frames == max_frames
    assert plan.indices[0] == 0 and plan.indices[-1] == 2 * 3600 * 30 - 1
    assert plan.effective_fps == pytest.approx(max_frames / 7200.0)
    assert plan.effective_fps < 2.0


@pytest.mark.parametrize("min_frames, expected", [(1, 2), (4, 4), (5, 4), (8, 8), (9, 8)])
def test_min_frames_then_round_down(min_frames, expected):
    # 1 s at 30 fps, fps=2 gives 2 frames before min_frames; odd bounds are rounded down to the multiple.
    plan = plan_frame_sampling(30, 30.0, FrameSampling(min_frames=min_frames))
    assert plan.num_frames == expected


@pytest.mark.parametrize("max_frames, expected", [(2, 2), (3, 2), (7, 6), (10, 10)])
def test_max_frames_then_round_down(max_frames, expected):
    plan = plan_frame_sampling(100, 10.0, FrameSampling(min_frames=1, max_frames=max_frames))
    assert plan.num_frames == expected


GRID = [(n, f, fps) for n in (1, 2, 3, 5, 17, 64, 1001) for f in (1.0, 7.5, 29.97) for fps in (0.5, 2.0, 30.0)]


@pytest.mark.parametrize("num_source_frames, source_fps, fps", GRID)
def test_plan_invariants(num_source_frames, source_fps, fps):
    sampling = FrameSampling(fps=fps)
    plan = plan_frame_sampling(num_source_frames, source_fps, sampling)
    assert plan == plan_frame_sampling(num_source_frames, source_fps, sampling)  # deterministic
    assert plan.num_frames % sampling.frame_multiple == 0
    assert sampling.frame_multiple <= plan.num_frames <= sampling.max_frames
    assert all(0 <= index < num_source_frames for index in plan.indices)
    assert list(plan.indices) == sorted(plan.indices)
    if plan.num_frames <= num_source_frames:
        assert len(set(plan.indices)) == plan.num_frames  # no repeats unless the clip is too short
        assert plan.indices[0] == 0 and plan.indices[-1] == num_source_frames - 1
    else:
        assert plan.indices[num_source_frames:] == (num_source_frames - 1,) * (plan.num_frames - num_source_frames)
    assert plan.second_per_grid == pytest.approx(sampling.frame_multiple / plan.effective_fps)
    assert all(math.isclose(t, i / source_fps) for t, i in zip(plan.timestamps, plan.indices))


@pytest.mark.parametrize("num_frames", [2, 4, 8, 16])
def test_num_frames_is_exact_regardless_of_length(num_frames):
    for num_source_frames in (1, 5, 16, 10_000):
        plan = plan_frame_sampling(num_source_frames, 24.0, FrameSampling(fps=None, num_frames=num_frames))
        assert plan.num_frames == num_frames


def test_num_frames_ignores_min_frames():
    plan = plan_frame_sampling(100, 10.0, FrameSampling(fps=None, num_frames=2, min_frames=8, max_frames=8))
    assert plan.num_frames == 2


def test_window_frames_stay_inside_window():
    sampling = FrameSampling(fps=4.0, start_time=3.3, end_time=7.1)
    plan = plan_frame_sampling(1000, 25.0, sampling)
    assert all(3.3 - 1 / 25 < t < 7.1 for t in plan.timestamps)
    assert plan.num_frames == 14  # frames 82..177: 96 frames = 3.84 s -> 15.36 -> 14


@pytest.mark.parametrize(
    "num_source_frames, source_fps, kwargs, field",
    [
        (0, 8.0, {}, "num_source_frames"),
        (-3, 8.0, {}, "num_source_frames"),
        (16, 0.0, {}, "source_fps"),
        (16, -1.0, {}, "source_fps"),
        (16, math.nan, {}, "source_fps"),
        (16, 8.0, {"start_time": 2.0}, "start_time"),  # exactly at the end (16 frames / 8 fps)
        (16, 8.0, {"start_time": 50.0, "end_time": 60.0}, "start_time"),
    ],
)
def test_plan_errors_name_the_problem(num_source_frames, source_fps, kwargs, field):
    with pytest.raises(ValueError, match=field):
        plan_frame_sampling(num_source_frames, source_fps, FrameSampling(**kwargs))


def test_plan_rejects_non_sampling():
    with pytest.raises(TypeError, match="FrameSampling"):
        plan_frame_sampling(16, 8.0, {"fps": 2.0})


INVALID_SPECS = [
    ({"fps": 2.0, "num_frames": 4}, "num_frames", "fps=None"),
    ({"fps": None}, "fps", "num_frames"),
    ({"fps": 0}, "fps", "positive"),
    ({"fps": -2.0}, "fps", "positive"),
    ({"fps": math.nan}, "fps", "finite"),
    ({"fps": math.inf}, "fps", "finite"),
    ({"fps": True}, "fps", "positive"),
    ({"fps": None, "num_frames": 0}, "num_frames", ">= 1"),
    ({"fps": None, "num_frames": 2.0}, "num_frames", "integer"),
    ({"fps": None, "num_frames": 5}, "num_frames", "num_frames=4 or num_frames=6"),
    ({"fps": None, "num_frames": 1}, "num_frames", "num_frames=2"),
    ({"fps": None, "num_frames": 1000}, "max_frames", "raise max_frames"),
    ({"min_frames": 0}, "min_frames", ">= 1"),
    ({"max_frames": 0}, "max_frames", ">= 1"),
    ({"min_frames": 10, "max_frames": 8}, "min_frames", "raise max_frames"),
    ({"min_frames": 1, "max_frames": 1}, "max_frames", "frame_multiple"),
    ({"frame_multiple": 0}, "frame_multiple", ">= 1"),
    ({"start_time": -1.0}, "start_time", ">= 0"),
    ({"start_time": math.nan}, "start_time", "finite"),
    ({"end_time": 0.0}, "end_time", "> 0"),
    ({"start_time": 5.0, "end_time": 5.0}, "start_time", "end_time"),
    ({"start_time": 6.0, "end_time": 5.0}, "start_time", "end_time"),
    ({"min_pixels": 0}, "min_pixels", ">= 1"),
    ({"max_pixels": -5}, "max_pixels", ">= 1"),
    ({"min_pixels": 1000, "max_pixels": 10}, "min_pixels", "max_pixels"),
]


@pytest.mark.parametrize("kwargs, field, fix", INVALID_SPECS, ids=[str(spec[0]) for spec in INVALID_SPECS])
def test_invalid_specs_name_field_and_fix(kwargs, field, fix):
    with pytest.raises(ValueError) as info:
        FrameSampling(**kwargs)
    message = str(info.value)
    assert field in message
    assert fix in message


def test_defaults_are_valid_and_frozen():
    sampling = FrameSampling()
    assert (sampling.fps, sampling.num_frames, sampling.frame_multiple) == (2.0, None, 2)
    assert sampling.min_pixels <= sampling.max_pixels
    with pytest.raises(dataclasses.FrozenInstanceError):
        sampling.fps = 4.0  # type: ignore[misc]
    plan = plan_frame_sampling(16, 8.0, sampling)
    assert isinstance(plan, SamplingPlan)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.indices = ()  # type: ignore[misc]


def test_contract_is_documented():
    doc = sampling_module.__doc__
    for term in ("fps", "num_frames", "max_frames", "min_frames", "frame_multiple", "repeated", "second_per_grid"):
        assert term in doc


def test_imports_stay_light():
    code = (
        "import sys, spava.media, spava.media.sampling, spava.media.video, spava.media.synthetic; "
        "heavy = {'av', 'decord', 'torchcodec', 'torch'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- rule 5: planning by presentation time ------------------------------------------------


@pytest.mark.parametrize("num_source_frames, source_fps, fps", GRID)
@pytest.mark.parametrize("window", [(None, None), (0.3, None), (0.1, 0.9)])
def test_time_plan_of_constant_rate_equals_index_plan(num_source_frames, source_fps, fps, window):
    start, end = window
    duration = num_source_frames / source_fps
    if start is not None:
        start, end = start * duration, (None if end is None else end * duration)
    sampling = FrameSampling(fps=fps, start_time=start, end_time=end)
    edges = [i / source_fps for i in range(num_source_frames + 1)]
    by_index = plan_frame_sampling(num_source_frames, source_fps, sampling)
    by_time = plan_frame_sampling(num_source_frames, source_fps, sampling, frame_times=edges)
    assert by_time.indices == by_index.indices
    assert by_time.timestamps == pytest.approx(by_index.timestamps)
    assert by_time.effective_fps == pytest.approx(by_index.effective_fps)
    assert by_time.second_per_grid == pytest.approx(by_index.second_per_grid)


# Edges of 7 frames: three quick ones, a freeze from 0.3 s to 2.0 s, two quick ones, a freeze to 4.0 s.
VFR_EDGES = [0.0, 0.1, 0.2, 0.3, 2.0, 2.1, 2.2, 4.0]


@pytest.mark.parametrize(
    "kwargs, expected_indices, clip_duration",
    [
        # 4 s at 2 fps = 8, capped at the 7 frames, rounded down to 6. Targets from 0.05 s (middle of
        # frame 0) to 3.1 s (middle of frame 6), 0.61 s apart: 0.05, 0.66, 1.27, 1.88, 2.49, 3.1.
        ({}, (0, 3, 3, 3, 6, 6), 4.0),
        # Window [1, 3): frames 3..6 overlap it; 3.7 s of them -> 7, capped at 4. Targets from 1.15 s
        # to 3.1 s, 0.65 s apart: 1.15, 1.8, 2.45, 3.1.
        ({"start_time": 1.0, "end_time": 3.0}, (3, 3, 6, 6), 3.7),
        # Exactly 2 frames: the middles of the first and last frames.
        ({"fps": None, "num_frames": 2}, (0, 6), 4.0),
        # More slots than frames: each frame once, the last repeated (rule 3's padding).
        ({"fps": None, "num_frames": 10}, (0, 1, 2, 3, 4, 5, 6, 6, 6, 6), 4.0),
    ],
    ids=["fps_2", "window", "exact_2", "padded"],
)
def test_time_plan_table(kwargs, expected_indices, clip_duration):
    sampling = FrameSampling(**kwargs)
    plan = plan_frame_sampling(7, 1.75, sampling, frame_times=VFR_EDGES)
    assert plan.indices == expected_indices
    assert plan.timestamps == tuple(VFR_EDGES[i] for i in expected_indices)
    assert plan.effective_fps == pytest.approx(len(expected_indices) / clip_duration)
    assert plan.second_per_grid == pytest.approx(2 * clip_duration / len(expected_indices))


def test_time_plan_target_on_a_boundary_takes_the_later_frame():
    # Frames shown during [0, 2), [2, 3), [3, 4), [4, 6): middles 1 and 5, so 3 targets at 1, 3, 5 s.
    # At 3 s frame 2 has just replaced frame 1.
    sampling = FrameSampling(fps=None, num_frames=3, frame_multiple=1)
    plan = plan_frame_sampling(4, 1.0, sampling, frame_times=[0.0, 2.0, 3.0, 4.0, 6.0])
    assert plan.indices == (0, 2, 3)


@pytest.mark.parametrize(
    "frame_times, needle",
    [([0.0, 1.0], "N \\+ 1"), ([0.0, 1.0, 1.0, 2.0], "strictly increasing"), ([0.0, 1.0, math.nan, 2.0], "finite")],
)
def test_time_plan_rejects_bad_frame_times(frame_times, needle):
    with pytest.raises(ValueError, match=needle):
        plan_frame_sampling(3, 1.0, FrameSampling(), frame_times=frame_times)


def test_time_plan_start_past_the_end():
    with pytest.raises(ValueError, match="start_time"):
        plan_frame_sampling(7, 1.75, FrameSampling(start_time=4.0), frame_times=VFR_EDGES)


# --- rule 6: total pixel budget -----------------------------------------------------------


def _reference_cap(num_frames, min_pixels, max_pixels, total_pixels):
    """qwen-vl-utils' fetch_video (Qwen2.5-VL repository), transcribed line by line."""
    video_max_pixels, frame_factor = 768 * 28 * 28, 2
    cap = max(min(video_max_pixels, total_pixels / num_frames * frame_factor), int(min_pixels * 1.05))
    max_pixels_supposed = max_pixels  # ele.get("max_pixels", cap)
    return min(max_pixels_supposed, cap)


@pytest.mark.parametrize(
    "num_frames, max_pixels, expected",
    [
        (64, 768 * 28 * 28, 602112.0),  # 64 frames keep the full 768 patches per frame
        (768, 768 * 28 * 28, 235200.0),  # 90316800 / 768 * 2: 300 patches per frame
        (302, 768 * 28 * 28, 90316800 / 302 * 2),  # a fractional cap, as the reference computes it
        (4000, 768 * 28 * 28, 105369.0),  # floored at int(min_pixels * 1.05)
        (64, 200_000, 200_000.0),  # a smaller request stands
        (64, 2_000_000, 602112.0),  # a larger request is clamped to the reference's ceiling
    ],
)
def test_effective_max_pixels_matches_reference(num_frames, max_pixels, expected):
    min_pixels, total = sampling_module.DEFAULT_MIN_PIXELS, sampling_module.DEFAULT_TOTAL_PIXELS
    cap = sampling_module.effective_max_pixels(num_frames, min_pixels, max_pixels, total, 2)
    assert cap == expected == _reference_cap(num_frames, min_pixels, max_pixels, total)


@pytest.mark.parametrize("num_frames", [2, 17, 64, 235, 236, 500, 768, 5000])
@pytest.mark.parametrize("total_pixels", [1_000_000, 24576 * 28 * 28, 90316800])
def test_effective_max_pixels_grid_against_reference(num_frames, total_pixels):
    for max_pixels in (100_352, 602_112, 1_003_520):
        got = sampling_module.effective_max_pixels(num_frames, 100_352, max_pixels, total_pixels, 2)
        assert got == _reference_cap(num_frames, 100_352, max_pixels, total_pixels)


def test_effective_max_pixels_without_budget_is_the_request():
    assert sampling_module.effective_max_pixels(768, 100_352, 2_000_000, None, 2) == 2_000_000.0
    with pytest.raises(ValueError, match="total_pixels"):
        sampling_module.effective_max_pixels(8, 100_352, 602_112, 0, 2)


def test_total_pixels_default_and_validation():
    assert FrameSampling().total_pixels == 90316800 == int(128000 * 28 * 28 * 0.9)
    assert FrameSampling(total_pixels=None).total_pixels is None
    with pytest.raises(ValueError, match="total_pixels"):
        FrameSampling(total_pixels=0)
