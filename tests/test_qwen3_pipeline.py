"""The CPU pipeline with a tiny Qwen3-VL checkpoint (`model.path`, family found from config.json).

One encoder rank (disaggregated: the `[n, d * (1 + K)]` rows with their DeepStack features travel
point to point) and 3 zigzag_ring prefill ranks answer a video and an image exactly like a
single-process `full` run of the same checkpoint on the same frames (float64, greedy); the video
prompt carries the frames' timestamps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _qwen3_tiny import tiny_model, tokenizer
from spava.attention.registry import get_method
from spava.comm.collectives import SPComm
from spava.comm.messages import TensorRef, VisualItem
from spava.config import load_config
from spava.media.images import resize_image
from spava.media.synthetic import make_synthetic_frames
from spava.models.family import get_family
from spava.models.generation import SamplingParams
from spava.models.runner import ModelRunner
from spava.runtime.pipeline import Pipeline

QUESTION = "What moves in this clip?"
NUM_TOKENS = 6


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3_vl_ckpt")
    tiny_model(torch.float64).hf.save_pretrained(path)
    tokenizer().save_pretrained(path)  # a checkpoint directory carries its tokenizer files
    overrides = [f"model.path={path}", "model.dtype=float64", "prefill.attention.method=zigzag_ring",
                 "encode.devices=[cpu]", "prefill.devices=[cpu,cpu,cpu]", "runtime.log_level=WARNING",
                 "video.fps=null", "video.num_frames=6", "video.min_pixels=4096", "video.max_pixels=16384",
                 "layout.system_prompt=''"]
    return load_config("configs/demo_cpu.yaml", overrides)


def _reference_tokens(config, item: VisualItem, frames: torch.Tensor) -> list[int]:
    """Single process, `full` attention, pixel rows made here from the same frames."""
    family = get_family(config.model)
    adapter = family.build(("vision", "text"), "cpu")
    inputs = family.processor().build_inputs(QUESTION, document=None, items=[item], system_prompt="")
    inputs.pixel_values = family.vision_spec().preprocess(frames, tuple(item.resized_hw), item.kind, torch.float64)
    runner = ModelRunner(adapter, get_method("full"), SPComm.single())
    return runner.generate(inputs, SamplingParams(max_new_tokens=NUM_TOKENS, ignore_eos=True)).token_ids


def test_a_video_and_an_image_are_answered_like_single_process_full(config):
    assert get_family(config.model).name == "qwen3_vl"
    frames = make_synthetic_frames(6, 80, 112, seed=3)
    image = make_synthetic_frames(1, 70, 90, seed=5)[0]
    with Pipeline.from_config(config, is_quiet=True) as pipeline:
        video_result = pipeline.run(frames, QUESTION, max_new_tokens=NUM_TOKENS, ignore_eos=True)
        image_result = pipeline.run(None, QUESTION, image=image, max_new_tokens=NUM_TOKENS, ignore_eos=True)
    assert video_result.method == "zigzag_ring" and video_result.world_size == 4
    spec = get_family(config.model).vision_spec()
    plan = spec.plan(6, 80, 112, 4096, 16384)  # 64 x 128 -> grid (3, 4, 8): 8 tokens per frame group
    assert video_result.num_visual_tokens == plan.num_tokens == 24
    # raw frames play at 2 fps: groups at 0.25, 1.25, 2.25 s
    video = VisualItem("video", TensorRef("", [6, 80, 112, 3], "uint8"), None, list(plan.grid_thw),
                       list(plan.resized_hw), [i / 2 for i in range(6)], 1.0)
    assert video_result.token_ids == _reference_tokens(config, video, torch.from_numpy(frames))
    image_plan = spec.plan(1, 70, 90, spec.image_min_pixels, spec.image_max_pixels)
    resized = torch.from_numpy(np.array(resize_image(image, *image_plan.resized_hw)))[None]
    item = VisualItem("image", TensorRef("", [1, *image_plan.resized_hw, 3], "uint8"), None,
                      list(image_plan.grid_thw), list(image_plan.resized_hw), [0.0], 0.0)
    assert image_result.num_visual_tokens == image_plan.num_tokens
    assert image_result.token_ids == _reference_tokens(config, item, resized)
