"""The Qwen3-VL model path against HF transformers (tiny random weights, float64, CPU).

Covers DeepStack (features of two ViT layers added after decoder layers 0 and 1 of 3), interleaved
M-RoPE with the timestamped video prompt, q/k norms, frame-parallel encoding and the routing of
`[n, d * (1 + K)]` visual rows to the ranks that hold their tokens.
"""

from __future__ import annotations

import pytest
import torch

from _qwen3_tiny import hf_reference, make_prompt, tiny_model
from spava.attention.config import AttentionConfig
from spava.attention.registry import get_method
from spava.comm.collectives import SPComm
from spava.models.generation import SamplingParams
from spava.models.runner import ModelRunner

NUM_NEW_TOKENS = 12
FULL_BUDGET = dict(anchor_len=8, passing_len=10**6, round_to=1)
CASES = [("zigzag_ring", {}), ("ulysses", {}), ("spava", FULL_BUDGET), ("apb", FULL_BUDGET)]
PROMPTS = [("video", (3, 4, 6)), ("video", (1, 12, 8)), ("image", (1, 10, 12)), ("text", None)]


def _generate(model, method_name, inputs, comm, **cfg):
    method = get_method(AttentionConfig(method=method_name, backend="torch_cpu", **cfg))
    runner = ModelRunner(model, method, comm, mlp_chunk_size=7)
    return runner.generate(inputs, SamplingParams(max_new_tokens=NUM_NEW_TOKENS, ignore_eos=True))


@pytest.mark.parametrize("kind,grid", PROMPTS)
def test_full_attention_matches_hf_logits_and_greedy_tokens(kind, grid):
    model = tiny_model()
    hf_kwargs, inputs = make_prompt(model, kind, grid)
    ref_logits, ref_tokens = hf_reference(model, hf_kwargs, NUM_NEW_TOKENS)
    out = _generate(model, "full", inputs, SPComm.single())
    assert torch.allclose(out.first_token_logits, ref_logits, atol=1e-8, rtol=0)
    assert out.token_ids == ref_tokens
    assert out.finish_reason == "length"


def test_deepstack_changes_the_answer():
    """The check above would pass with DeepStack ignored if its features were negligible: they are not."""
    model = tiny_model()
    hf_kwargs, inputs = make_prompt(model, "video", (3, 4, 6))
    ref_logits, _ = hf_reference(model, hf_kwargs, 1)
    model.take_layer_additions = lambda: None  # the embeddings are placed, the DeepStack parts dropped
    out = _generate(model, "full", inputs, SPComm.single())
    assert (out.first_token_logits - ref_logits).abs().max() > 1e-3


def test_positions_equal_hf_get_rope_index_of_the_model():
    model = tiny_model()
    for kind, grid in PROMPTS:
        hf_kwargs, inputs = make_prompt(model, kind, grid)
        grids = {key: value.clone() for key, value in hf_kwargs.items() if key.endswith("grid_thw")}
        positions, delta = model.hf.model.get_rope_index(hf_kwargs["input_ids"], hf_kwargs["mm_token_type_ids"],
                                                         **grids)
        assert torch.equal(positions[:, 0], inputs.position_ids), (kind, grid)
        assert int(delta) == inputs.rope_delta


@torch.inference_mode()
def test_encoding_temporal_grids_apart_equals_encoding_them_together():
    """HF's tower never attends across temporal grids: frame-parallel encoding is exact."""
    model = tiny_model()
    grid = (4, 6, 8)
    pixels = torch.randn(grid[0] * grid[1] * grid[2], 3 * 2 * 16 * 16, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(1))
    whole = model.encode(pixels, torch.tensor([grid]))
    per_grid = grid[1] * grid[2]
    parts = [model.encode(pixels[i * per_grid:(i + 1) * per_grid], torch.tensor([[1, *grid[1:]]]))
             for i in range(grid[0])]
    assert whole.shape == (grid[0] * per_grid // 4, model.visual_width)
    assert model.visual_width == 64 * 3  # embedding + 2 DeepStack features
    assert torch.allclose(torch.cat(parts), whole, atol=1e-12, rtol=0)


def _distributed_cases(rank, world_size):
    model = tiny_model()
    failures = []
    cases = CASES + ([("star", {})] if world_size == 2 else [])  # star's layout is exact at W = 2 only
    for kind, grid in PROMPTS:
        hf_kwargs, inputs = make_prompt(model, kind, grid)
        ref_logits, ref_tokens = hf_reference(model, hf_kwargs, NUM_NEW_TOKENS)
        for name, cfg in cases:
            out = _generate(model, name, inputs, SPComm(), **cfg)
            tag = f"{name} W={world_size} rank={rank} {kind} grid={grid}"
            if out.token_ids != ref_tokens:
                failures.append(f"{tag}: tokens {out.token_ids} != {ref_tokens}")
            if out.first_token_logits is not None and not torch.allclose(out.first_token_logits, ref_logits,
                                                                         atol=1e-8, rtol=0):
                failures.append(f"{tag}: logits differ by {(out.first_token_logits - ref_logits).abs().max():.2e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("world_size", [2, 3])
def test_sequence_parallel_methods_match_hf(run_ranks, world_size):
    run_ranks(_distributed_cases, world_size, timeout=500)


def test_rows_placed_in_blocks_give_the_same_additions_as_at_once():
    """A disaggregated prefill rank places one block of rows per encoder; the additions must not care."""
    model = tiny_model()
    width, generator = 64, torch.Generator().manual_seed(2)
    rows = torch.randperm(10, generator=generator)[:7]
    features = torch.randn(7, model.visual_width, generator=generator, dtype=torch.float64)
    at_once, in_blocks = torch.zeros(10, width, dtype=torch.float64), torch.zeros(10, width, dtype=torch.float64)
    model.place_visual(at_once, rows, features)
    whole = model.take_layer_additions()
    model.place_visual(in_blocks, rows[:3], features[:3])
    model.place_visual(in_blocks, rows[3:], features[3:])
    blocks = model.take_layer_additions()
    assert torch.equal(at_once, in_blocks) and torch.equal(at_once[rows], features[:, :width])
    assert sorted(whole) == sorted(blocks) == [0, 1]
    for layer in (0, 1):
        assert torch.equal(whole[layer][0], blocks[layer][0]) and torch.equal(whole[layer][1], blocks[layer][1])
        assert torch.equal(whole[layer][1], features[:, width * (layer + 1): width * (layer + 2)])
    assert model.take_layer_additions() is None  # taken once
    with pytest.raises(ValueError, match="expected 192 = 64"):
        model.place_visual(at_once, rows, features[:, :width])
