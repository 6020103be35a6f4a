"""CPU stage workers use a share of the cores; threaded frame resizing gives the same pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spava.config import load_config
from spava.models.qwen2_5_vl.processing import resize_frames
from spava.runtime.roles import cpu_stage_threads


def test_cpu_stage_threads_share_the_cores():
    config = load_config("configs/demo_cpu.yaml")
    num_workers = config.video.num_workers + config.layout.num_workers + config.world_size
    assert cpu_stage_threads(config, 2) == 1  # CI: two cores, several workers
    assert cpu_stage_threads(config, 4 * num_workers) == 4
    assert cpu_stage_threads(config, 1000) == 8


@pytest.mark.parametrize("num_threads", [1, 2, 3])
def test_threaded_pil_resize_equals_frame_by_frame(num_threads):
    pytest.importorskip("PIL")
    from PIL import Image

    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, 37, 61, 3), dtype=np.uint8))
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        got = resize_frames(frames, 28, 56, backend="pil")
    finally:
        torch.set_num_threads(previous)
    want = [np.asarray(Image.fromarray(f).resize((56, 28), resample=Image.Resampling.BICUBIC)) for f in frames.numpy()]
    assert torch.equal(got, torch.from_numpy(np.stack(want)))
