"""spava's Qwen3-VL vision forward (`FastQwen3Vision`) against HF's tower, tiny random weights, float64, CPU.

Covers what makes the forward differ from HF's code path: the patch embedding as a GEMM, position
embeddings interpolated once per grid size and added to every temporal grid, the rotary in one
function, one attention call over every temporal grid, and grids of different sizes in one call.
"""

from __future__ import annotations

import pytest
import torch

from _qwen3_tiny import PATCH_DIM, tiny_model
from spava.models.qwen3_vl.vision_fast import FastQwen3Vision, has_layout_helpers

pytestmark = pytest.mark.skipif(not has_layout_helpers(), reason="needs transformers.vision_utils")


def _hf_encode(visual, pixels, grids):
    out = visual(pixels, grid_thw=torch.tensor(grids), return_dict=True)
    return torch.cat([out.pooler_output, *out.deepstack_features], dim=1)


@pytest.mark.parametrize("grids", [[[3, 4, 6]], [[1, 8, 4]], [[2, 4, 6], [1, 6, 6], [2, 4, 6]]])
@torch.inference_mode()
def test_fast_tower_equals_hf(grids):
    model = tiny_model()
    visual = model.hf.model.visual
    num_patches = sum(t * h * w for t, h, w in grids)
    pixels = torch.randn(num_patches, PATCH_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = _hf_encode(visual, pixels, grids)
    fast = FastQwen3Vision(visual)
    got = fast.encode(pixels, grids)
    assert got.shape == expected.shape == (num_patches // 4, model.visual_width)
    # HF rotates q and k in float32 in both paths (same formula): the rest is float64 rounding
    assert torch.allclose(got, expected, atol=1e-6 * expected.abs().max().item(), rtol=0)
    assert torch.equal(fast.encode(pixels, grids), got)  # the cached layout gives the same rows


@torch.inference_mode()
def test_adapter_encodes_with_the_fast_tower_by_default_and_hf_on_request():
    model = tiny_model()
    grid = [[2, 4, 6]]
    pixels = torch.randn(48, PATCH_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fast = model.encode(pixels, torch.tensor(grid))
    assert model._fast_visual is not None
    model.vision_impl = "hf"
    reference = model.encode(pixels, torch.tensor(grid))
    assert torch.allclose(fast, reference, atol=1e-6 * reference.abs().max().item(), rtol=0)
    with pytest.raises(ValueError, match="vision_impl"):
        type(model)(model.hf, vision_impl="triton")
