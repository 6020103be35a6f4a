"""Tests for decode_video_into: parallel decoders, progress, cancellation, worker failures.

The reference for every decoded frame is an independent plain-PyAV decode of the whole
file from its start (same FFmpeg decoder, so pixels must match exactly).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

av = pytest.importorskip("av")

from spava.media import pyav_decoder  # noqa: E402
from spava.media.sampling import FrameSampling  # noqa: E402
from spava.media.synthetic import make_synthetic_frames, read_frame_index, write_synthetic_video  # noqa: E402
from spava.media.video import (  # noqa: E402
    DecodeCancelled,
    DecodeProgress,
    VideoDecodeError,
    decode_video_into,
    plan_video_sampling,
    probe_video,
)

H264 = "libx264" if "libx264" in av.codecs_available else "mpeg4"


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """300 frames at 25 fps with a keyframe every 12 frames, and every frame decoded by plain PyAV."""
    path = write_synthetic_video(
        tmp_path_factory.mktemp("parallel") / "long.mp4", num_frames=300, height=64, width=96, fps=25.0,
        codec=H264, keyframe_interval=12,
    )
    with av.open(str(path)) as container:
        reference = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    return path, reference


def _decode(path, sampling, **kwargs):
    info = probe_video(path)
    plan = plan_video_sampling(info, sampling)
    out = np.zeros((plan.num_frames, info.height, info.width, 3), np.uint8)
    return plan, out, decode_video_into(path, plan, out, info=info, **kwargs)


@pytest.mark.parametrize("num_workers", [1, 2, 3, 4, 0])
@pytest.mark.parametrize(
    "sampling",
    [
        FrameSampling(fps=2.0),
        FrameSampling(fps=None, num_frames=64),
        FrameSampling(fps=None, num_frames=6, start_time=3.0),
    ],
    ids=["fps_2", "exact_64", "window"],
)
def test_workers_fill_out_with_the_planned_frames(long_video, sampling, num_workers):
    path, reference = long_video
    plan, out, report = _decode(path, sampling, num_workers=num_workers)
    np.testing.assert_array_equal(out, reference[list(plan.indices)])
    assert [read_frame_index(frame) for frame in out] == [i % 256 for i in plan.indices]
    assert report.timestamps == pytest.approx([i / 25.0 for i in plan.indices], abs=1e-6)
    assert report.decoder == "pyav" and report.warnings == []
    assert 1 <= report.num_workers <= (num_workers or 64)
    assert len(set(plan.indices)) <= report.num_decoded_frames
    assert report.decode_seconds > 0 and report.probe_seconds >= report.index_seconds > 0


def test_workers_split_the_plan(long_video):
    path, _ = long_video
    _, _, report = _decode(path, FrameSampling(fps=None, num_frames=64), num_workers=4)
    assert report.num_workers == 4  # 25 groups of pictures: four balanced segments pay off


@pytest.mark.parametrize("num_workers", [1, 3])
def test_on_frames_reports_every_slot_once_including_repeats(tmp_path, num_workers):
    # 3 frames asked for 6 slots: the last frame fills slots 2..5.
    path = write_synthetic_video(tmp_path / "short.mp4", num_frames=3, codec=H264)
    calls, lock = [], threading.Lock()

    def on_frames(start, stop):
        with lock:
            calls.append((start, stop))

    plan, out, _ = _decode(path, FrameSampling(fps=None, num_frames=6), num_workers=num_workers, on_frames=on_frames)
    assert plan.indices == (0, 1, 2, 2, 2, 2)
    assert sorted(calls) == [(0, 1), (1, 2), (2, 6)]
    assert [read_frame_index(frame) for frame in out] == [0, 1, 2, 2, 2, 2]


def test_progress_prefix_reaches_the_end(long_video):
    path, _ = long_video
    prefixes = []
    info = probe_video(path)
    plan = plan_video_sampling(info, FrameSampling(fps=None, num_frames=64))
    progress = DecodeProgress(plan.num_frames, on_prefix=prefixes.append)
    out = np.zeros((plan.num_frames, info.height, info.width, 3), np.uint8)
    decode_video_into(path, plan, out, info=info, num_workers=4, on_frames=progress)
    assert progress.num_ready == progress.num_written == plan.num_frames
    assert prefixes == sorted(prefixes) and prefixes[-1] == plan.num_frames


@pytest.mark.parametrize("num_workers", [1, 4])
def test_should_stop_cancels_every_worker(long_video, num_workers):
    path, _ = long_video
    num_polls = []
    threads_before = threading.active_count()

    def should_stop():
        num_polls.append(1)
        return len(num_polls) > 40

    progress = None
    with pytest.raises(DecodeCancelled):
        info = probe_video(path)
        plan = plan_video_sampling(info, FrameSampling(fps=None, num_frames=64))
        progress = DecodeProgress(plan.num_frames)
        out = np.zeros((plan.num_frames, info.height, info.width, 3), np.uint8)
        decode_video_into(path, plan, out, info=info, num_workers=num_workers, on_frames=progress,
                          should_stop=should_stop)
    assert progress.num_written < plan.num_frames
    assert threading.active_count() == threads_before  # no decoder thread left behind


def test_a_failing_worker_stops_the_others_and_raises_once(long_video):
    path, _ = long_video
    info = probe_video(path)
    plan = plan_video_sampling(info, FrameSampling(fps=None, num_frames=64))
    out = np.zeros((plan.num_frames, info.height, info.width, 3), np.uint8)
    progress = DecodeProgress(plan.num_frames)

    def on_frames(start, stop):
        if start == 40:
            raise RuntimeError("consumer failed at slot 40")
        progress(start, stop)

    with pytest.raises(RuntimeError, match="slot 40"):
        decode_video_into(path, plan, out, info=info, num_workers=4, on_frames=on_frames)
    assert progress.num_written < plan.num_frames


def test_a_frame_that_never_decodes_is_an_error_not_a_wrong_frame(long_video, monkeypatch):
    path, _ = long_video
    info = probe_video(path)
    lost_pts = info.packet_index.pts[100]
    real_frames = pyav_decoder._decoded_frames

    def lose_one_frame(*args):
        return (frame for frame in real_frames(*args) if frame.pts != lost_pts)

    monkeypatch.setattr(pyav_decoder, "_decoded_frames", lose_one_frame)
    plan = plan_video_sampling(info, FrameSampling(fps=None, num_frames=4, start_time=4.0, end_time=4.3))
    assert 100 in plan.indices
    out = np.zeros((plan.num_frames, info.height, info.width, 3), np.uint8)
    with pytest.raises(VideoDecodeError, match=r"do not decode, first at 4\.000 s"):
        decode_video_into(path, plan, out, info=info, num_workers=2)


def test_out_must_match_the_plan_and_probe(long_video):
    path, _ = long_video
    info = probe_video(path)
    plan = plan_video_sampling(info, FrameSampling(fps=None, num_frames=4))
    wrong = [((4, 64, 96, 3), np.float32), ((4, 96, 64, 3), np.uint8), ((2, 64, 96, 3), np.uint8)]
    for out in (np.zeros(shape, dtype) for shape, dtype in wrong):
        with pytest.raises(ValueError, match=r"\(4, 64, 96, 3\)"):
            decode_video_into(path, plan, out, info=info)
    read_only = np.zeros((4, 64, 96, 3), np.uint8)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        decode_video_into(path, plan, read_only, info=info)
    with pytest.raises(ValueError, match="num_workers"):
        decode_video_into(path, plan, np.zeros((4, 64, 96, 3), np.uint8), num_workers=-1)


def test_decode_into_probes_when_no_info_is_given(long_video):
    path, reference = long_video
    info = probe_video(path)
    plan = plan_video_sampling(info, FrameSampling(fps=None, num_frames=8))
    out = np.zeros((8, 64, 96, 3), np.uint8)
    report = decode_video_into(path.read_bytes(), plan, out, num_workers=2)
    np.testing.assert_array_equal(out, reference[list(plan.indices)])
    assert report.probe_seconds > 0


def test_in_memory_frames_into_out():
    frames = make_synthetic_frames(10, 32, 48, seed=2)
    info = probe_video(frames)
    plan = plan_video_sampling(info, FrameSampling(fps=None, num_frames=4))
    out = np.zeros((4, 32, 48, 3), np.uint8)
    progress = DecodeProgress(4)
    report = decode_video_into(frames, plan, out, on_frames=progress)
    np.testing.assert_array_equal(out, frames[list(plan.indices)])
    assert report.decoder == "frames" and progress.num_ready == 4
    assert report.timestamps == list(plan.timestamps)
