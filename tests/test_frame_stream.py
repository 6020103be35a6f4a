"""Frames that stream in: the progress file, `SharedFrames`, and encoding units as they arrive.

The video worker writes frames into a shared-memory file and marks each one; model ranks read a
unit (one temporal patch = 2 frames) once both frames are marked, preprocess it on their device and
encode whatever is ready. Checked here against a complete, preprocessed-at-once reference: any order
of arrival gives the same features, failures reach every reader, and nothing waits forever.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from spava.comm.messages import VisualItem
from spava.comm.transport import (PROGRESS_DONE, PROGRESS_FAILED, PROGRESS_RUNNING, FrameProgress,
                                  create_shared_frames, fail_progress, new_ref_path)
from spava.models.qwen2_5_vl.family import make_vision_spec
from spava.models.qwen2_5_vl.presets import vision_preset
from spava.models.vision_inputs import FramesFailed, PixelRows, SharedFrames
from spava.models.vision_parallel import assign_units, encode_units, plan_vision_units

SPEC = make_vision_spec(vision_preset("7b"))
HEIGHT, WIDTH = 56, 84  # already a multiple of 28: no resize, 4 x 6 patches per frame


def _frames(num_frames, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (num_frames, HEIGHT, WIDTH, 3), dtype=torch.uint8, generator=generator)


def _stream(tmp_path, num_frames):
    """A frames file + progress file as the video worker makes them, and the `VisualItem` announcing them."""
    ref, array = create_shared_frames(str(tmp_path), "req", num_frames, HEIGHT, WIDTH)
    progress_path = new_ref_path(str(tmp_path), "req", "progress")
    progress = FrameProgress.create(progress_path, num_frames)
    plan = SPEC.plan(num_frames, HEIGHT, WIDTH, 56 * 56, 28 * 28 * 64)
    item = VisualItem("video", ref, progress_path, list(plan.grid_thw), list(plan.resized_hw),
                      [k / 2 for k in range(num_frames)], 1.0)
    return item, array, progress


def _write(array, progress, frames, order, delay_s=0.0):
    for index in order:
        array[index] = frames[index].numpy()
        progress.mark(index, index + 1)
        time.sleep(delay_s)


def _fake_encode(rows, grid):
    """Per merged token (4 consecutive rows): a fixed linear map. Units stay independent, like the ViT."""
    merged = rows.view(-1, 4, rows.shape[1]).sum(dim=1)
    return merged[:, :16] * 0.5 + merged[:, 16:32]


def test_progress_status_only_moves_once(tmp_path):
    progress = FrameProgress.create(str(tmp_path / "p"), 5)
    assert progress.ready() == (PROGRESS_RUNNING, [False] * 5)
    progress.mark(1, 3)
    assert progress.ready()[1] == [False, True, True, False, False]
    progress.finish(is_ok=True)
    fail_progress(progress.path)  # too late: the stream ended well
    assert progress.status() == PROGRESS_DONE
    other = FrameProgress.create(str(tmp_path / "q"), 2)
    fail_progress(other.path)
    other.finish(is_ok=True)
    assert other.status() == PROGRESS_FAILED
    fail_progress(str(tmp_path / "gone"))  # a missing file is not an error
    progress.close(), other.close()


def test_units_are_ready_when_both_of_their_frames_are_written(tmp_path):
    item, array, progress = _stream(tmp_path, 5)  # 3 units: frames (0,1), (2,3), (4) padded
    source = SharedFrames([item], SPEC)
    assert source.ready_units([0, 1, 2]) == []
    _write(array, progress, _frames(5), [1, 2, 4])
    assert source.ready_units([0, 1, 2]) == [2]  # unit 2 is frame 4 alone
    _write(array, progress, _frames(5), [0])
    assert source.ready_units([0, 1, 2]) == [0, 2]
    progress.finish(is_ok=True)  # done: every unit counts as ready
    assert source.ready_units([0, 1, 2]) == [0, 1, 2]
    source.close(), progress.close()


def test_a_failed_stream_fails_every_reader(tmp_path):
    item, array, progress = _stream(tmp_path, 4)
    readers = [SharedFrames([item], SPEC) for _ in range(2)]
    _write(array, progress, _frames(4), [0, 1])
    fail_progress(item.progress)
    for source in readers:
        with pytest.raises(FramesFailed):
            source.ready_units([0, 1])
        with pytest.raises(FramesFailed):
            source.wait_complete()
        source.close()
    progress.close()


def test_a_stalled_stream_times_out(tmp_path):
    item, _, progress = _stream(tmp_path, 4)
    source = SharedFrames([item], SPEC, stall_timeout_s=0.2)
    with pytest.raises(FramesFailed, match="no new frame"):
        source.wait_units([0, 1])
    source.close(), progress.close()


@pytest.mark.parametrize("order", ["in_order", "reversed", "interleaved"])
def test_streamed_units_encode_to_the_features_of_the_whole_video(tmp_path, order):
    num_frames = 9  # 5 units, the last one padded
    frames = _frames(num_frames, seed=1)
    item, array, progress = _stream(tmp_path, num_frames)
    arrival = {"in_order": list(range(num_frames)), "reversed": list(range(num_frames))[::-1],
               "interleaved": [4, 5, 0, 1, 8, 2, 3, 6, 7]}[order]
    writer = threading.Thread(target=_write, args=(array, progress, frames, arrival, 0.02))
    units = plan_vision_units([tuple(item.grid_thw)], SPEC.merge_size)
    assignment = assign_units(units, 2)
    reference = PixelRows(SPEC.preprocess(frames, tuple(item.resized_hw)))
    source = SharedFrames([item], SPEC)
    writer.start()
    try:
        for rank in range(2):
            streamed = encode_units(_fake_encode, source, units, assignment, rank, torch.device("cpu"), torch.float32)
            expected = encode_units(_fake_encode, reference, units, assignment, rank, torch.device("cpu"),
                                    torch.float32)
            assert torch.equal(streamed, expected), (order, rank)
    finally:
        writer.join()
    progress.finish(is_ok=True)
    source.wait_complete()
    assert source.timer.totals()["frames_wait_s"] > 0
    source.close(), progress.close()


def test_rows_read_only_the_frames_of_their_units(tmp_path):
    frames = _frames(6, seed=2)
    item, array, progress = _stream(tmp_path, 6)
    _write(array, progress, frames, [2, 3])
    source = SharedFrames([item], SPEC)
    units = plan_vision_units([tuple(item.grid_thw)], SPEC.merge_size)
    rows = source.rows([units[1]], torch.device("cpu"), torch.float32)
    assert torch.equal(rows, SPEC.preprocess(frames[2:4], tuple(item.resized_hw)))
    source.close(), progress.close()


def test_frames_file_is_shared_and_sized_up_front(tmp_path):
    ref, array = create_shared_frames(str(tmp_path), "r", 3, 10, 12)
    assert ref.shape == [3, 10, 12, 3] and ref.dtype == "uint8"
    array[1] = 7
    array.flush()
    data = np.fromfile(ref.path, dtype=np.uint8).reshape(3, 10, 12, 3)
    assert (data[1] == 7).all() and (data[0] == 0).all()
