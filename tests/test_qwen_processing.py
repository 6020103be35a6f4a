"""Parity of spava's Qwen2.5-VL preprocessing with transformers' Qwen2VLImageProcessorPil.

Without torchvision, ``Qwen2VLImageProcessorPil`` is the only Qwen2-VL processor that
transformers 5.x can run. It is built here from kwargs (no hub access). Images are
compared with it directly. For videos, the reference is assembled from its per-frame
outputs. A frame pair (A, B) forms one temporal patch. The HF image output for A holds
A in both frame slots of each patch row (``[.., C, frame, 14, 14]``), so slot 0 is taken
from A's output and slot 1 from B's. An odd last frame is repeated, so it becomes the
image output of that frame.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spava.models.qwen2_5_vl.processing import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    QwenProcessorConfig,
    get_grid_thw,
    normalize_patches,
    num_vision_tokens,
    patchify_frames,
    preprocess_images,
    preprocess_videos,
    resize_frames,
    smart_resize,
)

pytest.importorskip("PIL", reason="Pillow is needed for the 'pil' resize backend and HF's PIL processor")
hf_pil = pytest.importorskip(
    "transformers.models.qwen2_vl.image_processing_pil_qwen2_vl",
    reason="transformers' Qwen2VLImageProcessorPil is the parity reference",
)

SIZES = [(37, 53), (100, 150), (333, 250), (56, 84), (1000, 30), (20, 20)]
SMALL_MAX_PIXELS = 28 * 28 * 64  # forces 333x250 to shrink


def _hf_processor(config: QwenProcessorConfig):
    # A fresh size dict: HF's __init__ writes min/max pixels into the dict it is given.
    return hf_pil.Qwen2VLImageProcessorPil(
        size={"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels},
        patch_size=config.patch_size,
        temporal_patch_size=config.temporal_patch_size,
        merge_size=config.merge_size,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )


def _hf_images(images, config):
    out = _hf_processor(config)(images=list(images), return_tensors="pt", input_data_format="channels_last")
    return out["pixel_values"], out["image_grid_thw"]


def _random_frames(rng, num_frames, height, width):
    return rng.integers(0, 256, size=(num_frames, height, width, 3), dtype=np.uint8)


def _hf_video_reference(frames, config):
    """HF-ordered video patches assembled from HF's per-frame image outputs (see module docstring)."""
    temporal = config.temporal_patch_size
    padded = list(frames) + [frames[-1]] * (-len(frames) % temporal)
    per_frame = [_hf_images([frame], config) for frame in padded]
    grid_h, grid_w = (int(v) for v in per_frame[0][1][0, 1:])
    groups = []
    for start in range(0, len(padded), temporal):
        slots = [per_frame[start + k][0].view(-1, 3, temporal, config.patch_size**2)[:, :, k] for k in range(temporal)]
        groups.append(torch.stack(slots, dim=2).reshape(-1, config.patch_dim))
    return torch.cat(groups), torch.tensor([[len(groups), grid_h, grid_w]])


def test_smart_resize_matches_hf_over_many_sizes():
    rng = np.random.default_rng(0)
    settings = [(56 * 56, 28 * 28 * 16384), (128 * 28 * 28, 768 * 28 * 28), (56 * 56, SMALL_MAX_PIXELS)]
    for height, width in rng.integers(1, 3000, size=(300, 2)).tolist() + SIZES:
        if max(height, width) / min(height, width) > 200:
            continue
        for min_pixels, max_pixels in settings:
            expected = hf_pil.smart_resize(height, width, 28, min_pixels, max_pixels)
            assert smart_resize(height, width, 28, min_pixels, max_pixels) == expected, (height, width)


def test_smart_resize_rejects_extreme_aspect_ratio():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2500)


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("max_pixels", [28 * 28 * 16384, SMALL_MAX_PIXELS])
def test_image_matches_hf_pil_processor_exactly(height, width, max_pixels):
    rng = np.random.default_rng(height * 1000 + width)
    image = _random_frames(rng, 1, height, width)[0]
    config = QwenProcessorConfig(max_pixels=max_pixels)
    expected_pixels, expected_grid = _hf_images([image], config)
    ours = preprocess_images([image], config)
    assert ours["pixel_values"].dtype == torch.float32 and ours["image_grid_thw"].dtype == torch.int64
    assert ours["pixel_values"].shape[1] == 1176
    assert torch.equal(ours["image_grid_thw"], expected_grid)
    assert torch.equal(ours["pixel_values"], expected_pixels)  # bit-identical, no tolerance


def test_image_batch_of_mixed_sizes_matches_hf():
    rng = np.random.default_rng(1)
    images = [_random_frames(rng, 1, h, w)[0] for h, w in SIZES[:4]]
    config = QwenProcessorConfig()
    expected_pixels, expected_grid = _hf_images(images, config)
    ours = preprocess_images(images, config)
    assert torch.equal(ours["image_grid_thw"], expected_grid)
    assert torch.equal(ours["pixel_values"], expected_pixels)


@pytest.mark.parametrize("num_frames,height,width", [(5, 100, 150), (4, 37, 53), (3, 333, 250), (1, 56, 84)])
def test_video_matches_hf_frame_by_frame_reference(num_frames, height, width):
    rng = np.random.default_rng(num_frames * 7 + height)
    frames = _random_frames(rng, num_frames, height, width)
    config = QwenProcessorConfig.for_video(min_pixels=56 * 56, max_pixels=28 * 28 * 16384)
    expected_pixels, expected_grid = _hf_video_reference(frames, config)
    ours = preprocess_videos([frames], config)
    assert torch.equal(ours["video_grid_thw"], expected_grid)
    assert torch.equal(ours["pixel_values_videos"], expected_pixels)


def test_two_videos_concatenate_in_order_and_token_helpers_agree():
    rng = np.random.default_rng(2)
    videos = [_random_frames(rng, 3, 100, 150), _random_frames(rng, 4, 60, 61)]
    config = QwenProcessorConfig.for_video(min_pixels=56 * 56)
    ours = preprocess_videos(videos, config)
    singles = [preprocess_videos([video], config) for video in videos]
    assert torch.equal(ours["pixel_values_videos"], torch.cat([s["pixel_values_videos"] for s in singles]))
    grids = ours["video_grid_thw"]
    assert [tuple(g) for g in grids.tolist()] == [get_grid_thw(len(v), v.shape[1], v.shape[2], config) for v in videos]
    assert ours["pixel_values_videos"].shape[0] == int(grids.prod(dim=1).sum())
    assert num_vision_tokens(grids, merge_size=2) == int(grids.prod(dim=1).sum()) // 4
    assert num_vision_tokens(grids[0]) == 2 * (grids[0, 1] // 2) * (grids[0, 2] // 2)


def test_video_defaults_are_qwen_video_bounds():
    config = QwenProcessorConfig.for_video()
    assert (config.min_pixels, config.max_pixels) == (128 * 28 * 28, 768 * 28 * 28)
    default = QwenProcessorConfig()
    assert (default.min_pixels, default.max_pixels) == (56 * 56, 28 * 28 * 16384)
    assert default.image_mean == OPENAI_CLIP_MEAN and default.image_std == OPENAI_CLIP_STD


def test_float32_division_equals_hf_float64_rescale_for_every_uint8():
    values = np.arange(256)
    hf_rescaled = (values.astype(np.float64) * (1 / 255)).astype(np.float32)
    assert np.array_equal(hf_rescaled, (torch.arange(256, dtype=torch.float32) / 255.0).numpy())


def test_patchify_row_order_groups_merge_squares():
    # Frame value = 10*row_patch + col_patch, so each patch is recognisable after patchify.
    grid_h, grid_w = 4, 6
    rows = torch.arange(grid_h).repeat_interleave(14).view(-1, 1)
    cols = torch.arange(grid_w).repeat_interleave(14).view(1, -1)
    frame = (10 * rows + cols).to(torch.uint8)
    frames = frame.view(1, 56, 84, 1).expand(1, 56, 84, 3)
    patches, grid = patchify_frames(frames)
    assert grid == (1, grid_h, grid_w)
    labels = patches[:, 0].tolist()
    assert labels[:8] == [0, 1, 10, 11, 2, 3, 12, 13]  # 2x2 merge squares, row-major over squares
    assert torch.equal(patches[0].view(3, 2, 14, 14)[:, 1], patches[0].view(3, 2, 14, 14)[:, 0])  # padded frame


def test_torch_backend_is_close_to_pil_backend():
    rng = np.random.default_rng(3)
    frames = _random_frames(rng, 2, 333, 250)
    pil = preprocess_videos([frames], QwenProcessorConfig.for_video(min_pixels=3136))
    torch_out = preprocess_videos([frames], QwenProcessorConfig.for_video(min_pixels=3136, resize_backend="torch"))
    assert torch.equal(pil["video_grid_thw"], torch_out["video_grid_thw"])
    # Pillow's and torch's uint8 bicubic kernels differ by at most a couple of levels.
    max_level_gap = 2 / 255 / min(OPENAI_CLIP_STD)
    assert (pil["pixel_values_videos"] - torch_out["pixel_values_videos"]).abs().max() <= max_level_gap + 1e-6


def test_same_size_frames_are_not_resized():
    frames = torch.randint(0, 256, (2, 56, 84, 3), dtype=torch.uint8)
    assert resize_frames(frames, 56, 84, "pil") is frames
    assert resize_frames(frames, 56, 84, "torch") is frames


def test_torch_normalisation_is_fused_form():
    patches = torch.arange(256, dtype=torch.uint8).repeat(1, 3).view(1, 768)
    out = normalize_patches(patches, QwenProcessorConfig(resize_backend="torch")).view(3, 256)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1) * 255.0
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1) * 255.0
    assert torch.equal(out, (torch.arange(256.0).view(1, 256) - mean) / std)


@pytest.mark.parametrize(
    "frames,match",
    [
        (np.zeros((2, 30, 30, 3), dtype=np.float32), "uint8"),
        (np.zeros((2, 30, 30, 4), dtype=np.uint8), r"\[T, H, W, 3\]"),
        (np.zeros((30, 30, 3), dtype=np.uint8), r"\[T, H, W, 3\]"),
    ],
)
def test_bad_video_inputs_raise_clear_errors(frames, match):
    with pytest.raises(ValueError, match=match):
        preprocess_videos([frames])


def test_config_validation():
    with pytest.raises(ValueError, match="resize_backend"):
        QwenProcessorConfig(resize_backend="cv2")
    with pytest.raises(ValueError, match="min_pixels"):
        QwenProcessorConfig(min_pixels=10_000, max_pixels=5_000)
