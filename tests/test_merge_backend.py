"""The LSE merge and the (out, lse) backends, single process."""

from __future__ import annotations

import pytest
import torch

from spava.attention.backend import attend_pieces, get_backend
from spava.attention.merge import merge_partials_, merge_stacked, start_accumulator


def _partial(scores: torch.Tensor, values: torch.Tensor):
    """Reference partial over a key subset: scores `[S, H, K]`, values `[K, H, D]`."""
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("shk,khd->shd", torch.softmax(scores, dim=-1), values)
    return out, lse


def test_merge_matches_one_logsumexp_in_float64():
    torch.manual_seed(0)
    scores = torch.randn(13, 4, 97, dtype=torch.float64) * 6
    values = torch.randn(97, 4, 32, dtype=torch.float64)
    ref_out, ref_lse = _partial(scores, values)
    cuts = [0, 5, 6, 40, 97]
    parts = [_partial(scores[..., a:b], values[a:b]) for a, b in zip(cuts, cuts[1:])]
    out, lse = start_accumulator(*parts[0])
    for part in parts[1:]:
        merge_partials_(out, lse, *part)
    assert (out - ref_out).abs().max() < 1e-9
    assert (lse - ref_lse).abs().max() < 1e-9
    stacked_out, stacked_lse = merge_stacked(torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]))
    assert (stacked_out - ref_out).abs().max() < 1e-9
    assert (stacked_lse - ref_lse).abs().max() < 1e-9


def test_merge_is_stable_for_far_apart_lse():
    out = torch.zeros(2, 1, 3, dtype=torch.float64)
    lse = torch.tensor([[1000.0], [-1000.0]], dtype=torch.float64)
    merge_partials_(out, lse, torch.ones(2, 1, 3, dtype=torch.float64), torch.tensor([[-1000.0], [1000.0]]))
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert torch.allclose(out[0], torch.zeros(1, 3, dtype=torch.float64))
    assert torch.allclose(out[1], torch.ones(1, 3, dtype=torch.float64))


@pytest.mark.parametrize("num_q,num_k", [(37, 53), (53, 53), (1, 90), (64, 200)])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("heads", [(8, 2), (6, 6), (4, 1)])
def test_cpu_backend_matches_math_reference_with_bottom_right_causal(num_q, num_k, is_causal, heads):
    torch.manual_seed(1)
    num_heads, num_kv_heads = heads
    q = torch.randn(num_q, num_heads, 59, dtype=torch.float64)
    k = torch.randn(num_k, num_kv_heads, 59, dtype=torch.float64)
    v = torch.randn(num_k, num_kv_heads, 59, dtype=torch.float64)
    ref_out, ref_lse = get_backend("math").attend(q, k, v, is_causal=is_causal)
    out, lse = get_backend("torch_cpu").attend(q, k, v, is_causal=is_causal)
    assert out.shape == (num_q, num_heads, 59) and lse.shape == (num_q, num_heads)
    assert (out - ref_out).abs().max() < 1e-10
    assert (lse - ref_lse).abs().max() < 1e-10
    if is_causal:  # bottom-right: the last row sees every key, the first sees num_k - num_q + 1
        dense = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(num_heads // num_kv_heads, 1)) / 59**0.5
        assert torch.allclose(lse[-1], torch.logsumexp(dense[:, -1], -1))
        assert torch.allclose(lse[0], torch.logsumexp(dense[:, 0, : num_k - num_q + 1], -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_backend_low_precision_error_is_within_twice_torch_math(dtype):
    torch.manual_seed(2)
    q, k, v = (torch.randn(113, 8, 64, dtype=torch.float64), torch.randn(203, 2, 64, dtype=torch.float64),
               torch.randn(203, 2, 64, dtype=torch.float64))
    ref, _ = get_backend("math").attend(q, k, v, is_causal=True)
    low = [x.to(dtype) for x in (q, k, v)]
    same_dtype_math, _ = get_backend("math").attend(*low, is_causal=True)
    out, _ = get_backend("torch_cpu").attend(*low, is_causal=True)
    math_error = (same_dtype_math.double() - ref).abs().max()
    assert (out.double() - ref).abs().max() <= 2 * math_error + 1e-6


def test_attend_pieces_equals_one_call_over_the_union():
    torch.manual_seed(3)
    q = torch.randn(20, 4, 16, dtype=torch.float64)
    k = torch.randn(70, 2, 16, dtype=torch.float64)
    v = torch.randn(70, 2, 16, dtype=torch.float64)
    backend = get_backend("torch_cpu")
    ref_out, ref_lse = backend.attend(q, k, v, is_causal=True)
    pieces = [(k[50:], v[50:], True), (k[:10], v[:10], False), (k[10:10], v[10:10], False), (k[10:50], v[10:50], False)]
    out, lse = attend_pieces(backend, q, pieces)
    assert (out - ref_out).abs().max() < 1e-12 and (lse - ref_lse).abs().max() < 1e-12


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_backend("nope")
