"""Qwen3-VL preprocessing and family wiring.

* Planning: the family's `VisionSpec` (factor 32) gives the frame size of transformers' Qwen3-VL video
  `smart_resize` for a temporal group (2 frames, twice the per-frame bounds: that function budgets
  all frames together) and of the image processor's `smart_resize`.
* Images: rows bit-identical to transformers' `Qwen2VLImageProcessorPil` (the torchvision-free
  processor Qwen3-VL's image processor config names the fast twin of) with Qwen3-VL's settings.
* Videos: transformers' Qwen3-VL video processor needs torchvision, so the reference is written
  here: every frame resized by torch's uint8 bicubic antialias kernel (what torchvision runs on the
  CPU), then HF's fused `(x - 255*mean) / (255*std)`, then each patch row gathered element by element
  in HF's layout (merge groups contiguous; columns channel, frame, row, column).
* The family: presets, checkpoints refused under the wrong family, loading a local checkpoint.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _qwen3_tiny import tiny_model
from spava.config import ModelConfig
from spava.media.images import resize_image
from spava.models.family import get_family
from spava.models.qwen3_vl.family import IMAGE_MAX_PIXELS, IMAGE_MIN_PIXELS, make_vision_spec
from spava.models.qwen3_vl.presets import PRESETS, vision_preset

SPEC = make_vision_spec(vision_preset("8b"))
SIZES = [(37, 53), (100, 150), (333, 250), (64, 96), (90, 160), (1080, 1920)]


def _frames(num_frames, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, size=(num_frames, height, width, 3), dtype=np.uint8))


def test_spec_is_qwen3_vl():
    assert (SPEC.patch_size, SPEC.temporal_patch_size, SPEC.merge_size, SPEC.factor) == (16, 2, 2, 32)
    assert SPEC.patch_dim == 1536 and SPEC.image_mean == SPEC.image_std == (0.5, 0.5, 0.5)
    assert (SPEC.image_min_pixels, SPEC.image_max_pixels) == (IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)


@pytest.mark.parametrize("height,width", [(h, w) for h in (32, 45, 100, 333, 720, 1080, 1440, 2160)
                                          for w in (40, 64, 250, 481, 1280, 1920, 2560)])
def test_frame_plan_matches_hf_smart_resize(height, width):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as image_resize
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as video_resize

    min_pixels, max_pixels = 128 * 32 * 32, 768 * 32 * 32
    plan = SPEC.plan(5, height, width, min_pixels, max_pixels)
    assert plan.resized_hw == video_resize(2, height, width, 2, 32, 2 * min_pixels, 2 * max_pixels)
    assert plan.grid_thw == (3, plan.resized_hw[0] // 16, plan.resized_hw[1] // 16)
    image = SPEC.plan(1, height, width, SPEC.image_min_pixels, SPEC.image_max_pixels)
    assert image.resized_hw == image_resize(height, width, 32, SPEC.image_min_pixels, SPEC.image_max_pixels)


@pytest.mark.parametrize("height,width", SIZES[:5])
def test_image_rows_equal_hf_pil_processor(height, width):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image = _frames(1, height, width, seed=2)[0].numpy()
    max_pixels = 32 * 32 * 64
    plan = SPEC.plan(1, height, width, SPEC.image_min_pixels // 16, max_pixels)
    resized = torch.from_numpy(np.array(resize_image(image, *plan.resized_hw)))[None]
    rows = SPEC.preprocess(resized, plan.resized_hw, "image")
    hf = Qwen2VLImageProcessorPil(size={"shortest_edge": SPEC.image_min_pixels // 16, "longest_edge": max_pixels},
                                  patch_size=16, temporal_patch_size=2, merge_size=2,
                                  image_mean=[0.5] * 3, image_std=[0.5] * 3)
    out = hf(images=[image], return_tensors="pt", input_data_format="channels_last")
    assert out["image_grid_thw"][0].tolist() == list(plan.grid_thw)
    assert torch.equal(rows, out["pixel_values"])


def _reference_video_rows(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The reference video path, written out (see the module docstring)."""
    resized = torch.stack([F.interpolate(frame.permute(2, 0, 1)[None], size=(height, width), mode="bicubic",
                                         antialias=True, align_corners=False)[0] for frame in frames])
    values = (resized.float() - 127.5) / 127.5  # mean 0.5 * 255, std 0.5 * 255
    if len(values) % 2:  # the last temporal patch repeats the last frame
        values = torch.cat([values, values[-1:]])
    patch, merge = 16, 2
    rows = []
    for t in range(len(values) // 2):
        for block_row in range(height // patch // merge):
            for block_col in range(width // patch // merge):
                for sub_row in range(merge):
                    for sub_col in range(merge):
                        y = (block_row * merge + sub_row) * patch
                        x = (block_col * merge + sub_col) * patch
                        cube = values[2 * t: 2 * t + 2, :, y: y + patch, x: x + patch]  # [frame, C, p, p]
                        rows.append(cube.permute(1, 0, 2, 3).reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("num_frames", [2, 3])
@pytest.mark.parametrize("height,width", [(37, 53), (100, 150), (90, 160)])
def test_video_rows_equal_the_reference_video_path(num_frames, height, width):
    frames = _frames(num_frames, height, width, seed=1)
    plan = SPEC.plan(num_frames, height, width, 32 * 32 * 4, 32 * 32 * 24)
    rows = SPEC.preprocess(frames, plan.resized_hw, "video")
    reference = _reference_video_rows(frames, *plan.resized_hw)
    assert rows.shape == (plan.grid_thw[0] * plan.grid_thw[1] * plan.grid_thw[2], 1536)
    assert torch.equal(rows, reference)


# ----- the family -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Qwen3-VL saved as a local HF checkpoint (safetensors + config.json)."""
    path = tmp_path_factory.mktemp("qwen3_vl_tiny")
    tiny_model(torch.float32).hf.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 4096, "longest_edge": 32 * 32 * 256}, "patch_size": 16, "merge_size": 2,
         "temporal_patch_size": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return path


def test_checkpoint_is_found_by_model_type_and_loads(checkpoint):
    family = get_family(ModelConfig(path=str(checkpoint)))
    assert family.name == "qwen3_vl"
    spec = family.vision_spec()
    assert (spec.patch_size, spec.image_min_pixels, spec.image_max_pixels) == (16, 4096, 32 * 32 * 256)
    adapter = family.build(("vision", "text"), "cpu")
    reference = tiny_model(torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(reference.hf.state_dict().values(), adapter.hf.state_dict().values()))
    encoder_only = family.build(("vision",), "cpu")
    assert encoder_only.hf.model.language_model is None and encoder_only.visual_width == 3 * 64
    with pytest.raises(RuntimeError, match="without its language part"):
        encoder_only.decoder_modules()
    text_only = family.build(("text",), "cpu")
    with pytest.raises(RuntimeError, match="without its vision part"):
        text_only.encode(torch.zeros(4, 1536), torch.tensor([[1, 2, 2]]))


def test_a_checkpoint_under_the_wrong_family_is_refused(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="is a 'qwen3_vl' checkpoint but model.family is 'qwen2_5_vl'"):
        ModelConfig(path=str(checkpoint), family="qwen2_5_vl")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    with pytest.raises(ValueError, match="is a 'qwen2_5_vl' checkpoint but model.family is 'qwen3_vl'"):
        ModelConfig(path=str(tmp_path), family="qwen3_vl")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl_moe"}))
    with pytest.raises(ValueError, match="'qwen3_vl_moe' checkpoint, which spava does not support"):
        ModelConfig(path=str(tmp_path))
    from spava.models.qwen3_vl.model import Qwen3VL

    with pytest.raises(ValueError, match="not a Qwen3-VL one"):
        Qwen3VL.from_pretrained(tmp_path)


def test_presets():
    assert set(PRESETS) == {"2b", "4b", "8b", "32b", "tiny"}
    assert get_family(ModelConfig(family="qwen3_vl", size="8b")).name == "qwen3_vl"
    with pytest.raises(ValueError, match="'7b' is not a qwen3_vl preset"):
        ModelConfig(family="qwen3_vl", size="7b")
    from spava.models.qwen3_vl.presets import qwen3_vl_config

    config = qwen3_vl_config("4b")
    assert (config.text_config.hidden_size, config.text_config.head_dim, config.tie_word_embeddings) == (2560, 128, True)
    assert config.vision_config.deepstack_visual_indexes == [5, 11, 17]
    assert config.vision_config.out_hidden_size == 2560
