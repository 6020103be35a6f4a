"""Pixel preprocessing on the model rank (`VisionSpec.preprocess`) against the CPU reference paths.

* Videos: the CPU path is the reference video path itself (torch uint8 bicubic antialias resize,
  then HF's fused video normalisation) and must equal `preprocess_video(..., resize_backend="torch")`
  bit for bit. The CUDA path resizes in two float32 passes rounded like the uint8 kernel's; run here
  on float frames (the branch CUDA takes) it must stay within two uint8 levels of the reference on
  under 2% of the pixels of random noise (the worst case: bicubic overshoots at every edge).
* Images: resized by Pillow in the video worker (`spava.media.images`), then patchified and
  normalised on the rank: bit-identical to HF's Qwen2VLImageProcessorPil path (`preprocess_images`).
* Slices: the rows of whole temporal patches of a video equal those rows of the whole video, so a
  rank that preprocesses only its units gets exactly its share.
* Grids and token counts from metadata (`VisionSpec.plan`) equal those of the pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spava.media.images import resize_image
from spava.models.preprocess import resize_frames, resize_frames_two_pass
from spava.models.qwen2_5_vl.family import make_vision_spec
from spava.models.qwen2_5_vl.presets import vision_preset
from spava.models.qwen2_5_vl.processing import QwenProcessorConfig, preprocess_images, preprocess_video

SPEC = make_vision_spec(vision_preset("7b"))
SIZES = [(37, 53), (100, 150), (333, 250), (56, 84), (90, 160)]


def _frames(num_frames, height, width, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(1, height, width, 3), dtype=np.uint8)
    noise = rng.integers(-20, 21, size=(num_frames, height, width, 3))
    return torch.from_numpy(np.clip(base + noise, 0, 255).astype(np.uint8))


def _reference_config(min_pixels, max_pixels):
    return QwenProcessorConfig(min_pixels=min_pixels, max_pixels=max_pixels, resize_backend="torch")


@pytest.mark.parametrize("num_frames", [1, 4, 5])
@pytest.mark.parametrize("height,width", SIZES)
def test_video_rows_equal_the_reference_video_path(num_frames, height, width):
    frames = _frames(num_frames, height, width)
    min_pixels, max_pixels = 56 * 56, 28 * 28 * 40
    plan = SPEC.plan(num_frames, height, width, min_pixels, max_pixels)
    rows = SPEC.preprocess(frames, plan.resized_hw, "video")
    reference, grid = preprocess_video(frames, _reference_config(min_pixels, max_pixels))
    assert tuple(grid.tolist()) == plan.grid_thw
    assert plan.num_tokens == rows.shape[0] // 4
    assert rows.dtype == torch.float32 and torch.equal(rows, reference)


@pytest.mark.parametrize("height,width", [(37, 53), (100, 150), (333, 250), (90, 160), (720, 1280)])
def test_the_float_resize_of_cuda_stays_within_two_levels(height, width):
    frames = _frames(3, height, width, seed=1)
    target = SPEC.plan(3, height, width, 56 * 56, 28 * 28 * 40 if height < 720 else 28 * 28 * 256).resized_hw
    exact, approx = resize_frames(frames, *target), resize_frames_two_pass(frames, *target)
    assert approx.dtype == torch.uint8 and approx.shape == exact.shape
    difference = (exact.int() - approx.int()).abs()
    assert difference.max().item() <= 2
    assert (difference > 0).float().mean().item() < 0.02
    one_pass = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=target, mode="bicubic", antialias=True)
    one_pass = one_pass.round().clamp(0, 255).permute(0, 2, 3, 1)
    assert (one_pass - exact.float()).abs().max().item() > 2  # why the intermediate rounding matters


@pytest.mark.parametrize("height,width", SIZES)
def test_image_rows_equal_the_hf_pil_path(height, width):
    image = _frames(1, height, width, seed=2)[0].numpy()
    plan = SPEC.plan(1, height, width, SPEC.image_min_pixels, 28 * 28 * 64)
    resized = torch.from_numpy(np.ascontiguousarray(resize_image(image, *plan.resized_hw)))[None]
    rows = SPEC.preprocess(resized, plan.resized_hw, "image")
    config = QwenProcessorConfig(min_pixels=SPEC.image_min_pixels, max_pixels=28 * 28 * 64)
    reference = preprocess_images([image], config)
    assert reference["image_grid_thw"][0].tolist() == list(plan.grid_thw)
    assert torch.equal(rows, reference["pixel_values"])


def test_rows_of_whole_temporal_patches_are_a_slice_of_the_video_rows():
    frames = _frames(7, 100, 150, seed=3)
    plan = SPEC.plan(7, 100, 150, 56 * 56, 28 * 28 * 40)
    whole = SPEC.preprocess(frames, plan.resized_hw)
    per_patch = plan.grid_thw[1] * plan.grid_thw[2]
    for first, stop in ((0, 2), (2, 3), (3, 4), (1, 4)):  # temporal patches [first, stop); the last one pads
        part = SPEC.preprocess(frames[2 * first: 2 * stop], plan.resized_hw)
        assert torch.equal(part, whole[first * per_patch: stop * per_patch])


def test_preprocess_in_bfloat16_is_the_rounded_float32_rows():
    frames = _frames(2, 56, 84, seed=4)
    rows32 = SPEC.preprocess(frames, (56, 84))
    rows16 = SPEC.preprocess(frames, (56, 84), dtype=torch.bfloat16)
    assert rows16.dtype == torch.bfloat16 and torch.equal(rows16, rows32.to(torch.bfloat16))


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        SPEC.preprocess(torch.zeros(2, 56, 84, 3), (56, 84))
