"""Torch references of the spava_kernels kernels: same signatures, same semantics, any device.

These are the arithmetic spava runs where no kernel does (the CPU, float64 tests): `spava.attention`
imports its LSE merge and its passing-token scoring from here, so a kernel that matches its
reference matches spava without kernels. This package is the bottom layer: nothing here imports
spava. Every function writes into caller-given buffers where the kernel does, so callers can swap.

The one LSE-merge rule set. A partial result over a key set K_i is (o_i, l_i), l_i = log sum_{j in K_i}
exp(s_j), o_i the softmax-weighted values. Over the union of two disjoint key sets, in the stable
log-sigmoid form (no exp of large numbers):

    o = o_a - sigmoid(l_b - l_a) * (o_a - o_b)
    l = l_a - logsigmoid(l_a - l_b)

An empty piece (lse = -inf: it saw no key for that row) leaves the other piece as it is, output and
lse, whatever the empty piece's output holds (even NaN); two empty pieces give piece a. Accumulators
are float32 (float64 for float64 inputs).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (reference runs); everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def start_accumulator(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh accumulator (out, lse) copied from a partial, in the accumulator dtype."""
    acc_dtype = accumulator_dtype(out.dtype)
    return out.to(acc_dtype, copy=True), lse.to(acc_dtype, copy=True)


def merge_partials_(out: torch.Tensor, lse: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> None:
    """Fold partial (out_b `[S, H, D]`, lse_b `[S, H]`) into the accumulator (out, lse), in place,
    with the rule of the module docstring (empty pieces included)."""
    out_a, lse_a = out.clone(), lse.clone()
    lse_b = lse_b.to(lse.dtype)
    weight_b = torch.sigmoid(lse_b - lse).unsqueeze(-1)
    out.sub_(weight_b * (out - out_b.to(out.dtype)))
    lse.sub_(F.logsigmoid(lse - lse_b))
    _apply_empty_rule(out, lse, out_a, lse_a, out_b, lse_b)


def query_aware_scores(q_query: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Summary-query dot products: q `[Lq, Hq, D]`, k `[S, Hkv, D]` -> `[S, Hkv]` float32 (the query
    block's queries averaged over its tokens and each GQA group, dotted with every key)."""
    return torch.einsum("shd,hd->sh", k.float(), summary_query(q_query, k.shape[1]))


def pool_scores(scores: torch.Tensor, window: int) -> torch.Tensor:
    """Max-pool `[S, Hkv]` along S (stride 1, same length for odd windows). Call it per chunk so it
    never bleeds across chunks; window <= 1 and empty chunks are left as they are."""
    if window <= 1 or scores.shape[0] == 0:
        return scores
    pooled = F.max_pool1d(scores.t().unsqueeze(0), window, stride=1, padding=window // 2)
    return pooled[0].t()


def merge_two(
    out_a: torch.Tensor,
    lse_a: torch.Tensor,
    out_b: torch.Tensor,
    lse_b: torch.Tensor,
    out: Optional[torch.Tensor] = None,
    lse_out: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LSE merge of two partial attention results over disjoint key sets.

    Args:
        out_a, out_b: partial outputs `[S, H, D]`, any float dtype, any strides.
        lse_a, lse_b: their log-sum-exps `[S, H]` (natural log), -inf where a piece saw no key.
        out: `[S, H, D]` destination (any float dtype, may be a view, may alias out_a); None: a new
            tensor of out_a's dtype.
        lse_out: `[S, H]` destination of the merged lse (may alias lse_a); None: a new one.

    Returns:
        (out, lse_out); lse is float32 (float64 for float64 inputs). Computed in that accumulator
        dtype and rounded once into `out`.
    """
    acc_out, acc_lse = start_accumulator(out_a, lse_a)  # copies, so out/lse_out may alias a
    merge_partials_(acc_out, acc_lse, out_b, lse_b)
    if out is None:
        out = acc_out.to(out_a.dtype)
    else:
        out.copy_(acc_out)
    if lse_out is None:
        lse_out = acc_lse
    else:
        lse_out.copy_(acc_lse)
    return out, lse_out


def _apply_empty_rule(acc_out, acc_lse, out_a, lse_a, out_b, lse_b) -> None:
    """Rows where a piece is empty (lse -inf) take the other piece (piece a when both are)."""
    a_empty = lse_a == NEG_INF
    b_empty = lse_b == NEG_INF
    if not bool((a_empty | b_empty).any()):
        return
    take_a = b_empty
    take_b = a_empty & ~b_empty
    acc_out.copy_(torch.where(take_a.unsqueeze(-1), out_a.to(acc_out.dtype), acc_out))
    acc_out.copy_(torch.where(take_b.unsqueeze(-1), out_b.to(acc_out.dtype), acc_out))
    acc_lse.copy_(torch.where(take_a, lse_a.to(acc_lse.dtype), acc_lse))
    acc_lse.copy_(torch.where(take_b, lse_b.to(acc_lse.dtype), acc_lse))


def merge_into_(acc_out: torch.Tensor, acc_lse: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> None:
    """Fold (out_b `[S,H,D]`, lse_b `[S,H]`) into the accumulator (acc_out, acc_lse), in place."""
    merge_two(acc_out, acc_lse, out_b, lse_b, out=acc_out, lse_out=acc_lse)


def summary_query(q_query: torch.Tensor, num_kv_heads: int) -> torch.Tensor:
    """The query-aware summary: q `[Lq, Hq, D]` -> `[Hkv, D]` float32, the mean over the query
    tokens and over the GQA group of each KV head (what `query_aware_scores` dots keys with)."""
    num_tokens, num_heads, dim = q_query.shape
    if num_tokens == 0:
        raise ValueError("the query_aware scorer needs query tokens; the prompt has an empty query block")
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads do not split into {num_kv_heads} KV-head groups")
    group = num_heads // num_kv_heads
    return q_query.float().reshape(num_tokens, num_kv_heads, group, dim).mean(dim=(0, 2))


def pooled_length(num_rows: int, window: int) -> int:
    """F.max_pool1d's output length with stride 1 and padding window // 2 (S + 1 for even windows);
    spava skips pooling for window <= 1 and for empty chunks, so then it is S."""
    if window <= 1 or num_rows == 0:
        return num_rows
    return num_rows + 2 * (window // 2) - window + 1


def score_and_pool(q_query: torch.Tensor, k: torch.Tensor, window: int) -> torch.Tensor:
    """Query-aware scores of the keys, max-pooled along S within this key range.

    Args:
        q_query: `[Lq, Hq, D]` the query block's queries; k: `[S, Hkv, D]` keys of one chunk.
        window: max-pool window (stride 1, padding window // 2; <= 1: no pooling).

    Returns:
        `[S_out, Hkv]` float32, S_out = S for odd windows and S + 1 for even ones (F.max_pool1d's
        length; 0 when S = 0). Possibly a transposed view.
    """
    return pool_scores(query_aware_scores(q_query, k), window)


def select_topk(pooled: torch.Tensor, num_select: int) -> torch.Tensor:
    """Row indices of the `num_select` largest scores per KV head: `[S, Hkv]` -> `[n, Hkv]` int64,
    unsorted (the order of the passing rows does not matter to attention).

    torch.topk on every device, Triton included: it is already one radix-select launch over the
    contiguous per-head columns that `score_and_pool` returns (a chunk has ~20k rows per head); a
    hand-written Triton top-k would repeat it and only pay if fused with something that needs it.
    """
    return pooled.topk(num_select, dim=0, sorted=False).indices


def pack_selected(
    k: torch.Tensor, v: torch.Tensor, index: torch.Tensor, out_k: torch.Tensor, out_v: torch.Tensor
) -> None:
    """out_k[i, h] = k[index[i, h], h] and the same for v, for rows i < n = index.shape[0].

    Args:
        k, v: `[S, Hkv, D]`; index: `[n, Hkv]` int64 in [0, S).
        out_k, out_v: `[slot_len, Hkv, D]` (slot_len >= n), same dtype as k/v; rows >= n untouched.
    """
    num_select = index.shape[0]
    if num_select == 0:
        return
    expanded = index.unsqueeze(-1).expand(-1, -1, k.shape[-1])
    _gather_rows(k, expanded, out_k[:num_select])
    _gather_rows(v, expanded, out_v[:num_select])


def _gather_rows(src: torch.Tensor, expanded: torch.Tensor, dst: torch.Tensor) -> None:
    """torch.gather along dim 0 into `dst`; through a temporary where dst is not contiguous."""
    if dst.is_contiguous():
        torch.gather(src, 0, expanded, out=dst)
    else:
        dst.copy_(torch.gather(src, 0, expanded))


def select_into(
    scores: torch.Tensor, num_select: int, k: torch.Tensor, v: torch.Tensor, out_k: torch.Tensor, out_v: torch.Tensor
) -> None:
    """Top-`num_select` tokens per KV head of one chunk, written into out_k/out_v rows [:num_select].

    Args:
        scores: `[B, Hkv]` pooled scores of the chunk; k, v: `[B, Hkv, D]` the chunk's keys/values.
        out_k, out_v: `[slot_len, Hkv, D]` send buffers (slot_len >= num_select).
    """
    pack_selected(k, v, select_topk(scores, num_select), out_k, out_v)


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's vision rotary: x `[T, H, D]`, cos/sin `[T, D/2]` (each half of HF's duplicated tables) ->
    `[T, H, D]` in x's dtype, computed in float32 (float64 for float64 x, the truth of tests) and
    rounded once; `x1 * c - x2 * s` is bitwise HF's `x1 * c + (-x2) * s`."""
    wide = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    half = x.shape[-1] // 2
    x1, x2 = wide[..., :half], wide[..., half:]
    c, s = cos.to(wide.dtype)[:, None, :], sin.to(wide.dtype)[:, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def swiglu_gemm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], width: int) -> torch.Tensor:
    """silu(x W[:width]^T + b[:width]) * (x W[width:]^T + b[width:]): x `[N, K]`, weight `[2W, K]` (gate
    rows then up rows) -> `[N, W]`, HF's ops in HF's order (each projection rounded, then SwiGLU)."""
    gate_up = torch.nn.functional.linear(x, weight, bias)
    return torch.nn.functional.silu(gate_up[:, :width]) * gate_up[:, width:]
