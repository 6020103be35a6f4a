"""Torch reference of `spava_kernels.decode_attention`: masked math over the whole cache capacity.

Same semantics as the Triton kernel on any device: q `[T, Hq, D]` against the first `length` rows of
k_cache / v_cache `[C, Hkv, D]` (GQA as HF's repeat_kv), bottom-right causal, rows that see no key
give lse -inf and a zero output. `length` may be an int or a 1-element tensor; with a tensor nothing
is read on the host (the mask is built on the device over all C rows), so this path is also free of
host syncs, at O(T * Hq * C) memory: for tests and small caches. Rows at or past `length` are never
used, whatever they hold (NaN included). Imports torch only.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

NEG_INF = float("-inf")


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 inputs (the truth of tests), float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def visible_keys(num_q: int, capacity: int, length: Union[int, torch.Tensor], is_causal: bool,
                 device: torch.device) -> torch.Tensor:
    """`[T, C]` bool: row t sees key j iff j < length (- T + 1 + t when causal), with length clamped to
    [0, C] (a tensor length is compared on the device)."""
    keys = torch.arange(capacity, device=device)
    if isinstance(length, torch.Tensor):
        length = length.reshape(()).to(device=device, dtype=torch.int64).clamp(0, capacity)
    limit = length + torch.zeros(num_q, dtype=torch.int64, device=device)
    if is_causal:
        limit = limit - num_q + 1 + torch.arange(num_q, device=device)
    return keys[None, :] < limit[:, None]


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, length: Union[int, torch.Tensor], *,
    scale: Optional[float] = None, is_causal: bool = True, out: Optional[torch.Tensor] = None,
    lse_out: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q `[T, Hq, D]` over the first `length` rows of k_cache, v_cache `[C, Hkv, D]`.

    Computed in float32 (float64 for float64 q) and rounded once. Returns (out `[T, Hq, D]` in q.dtype,
    or written into `out`; lse `[T, Hq]` natural log of the scaled scores, float32 (float64 for float64
    q), or written into `lse_out`)."""
    num_q, num_heads, dim = q.shape
    capacity, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    acc = accumulator_dtype(q.dtype)
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    visible = visible_keys(num_q, capacity, length, is_causal, q.device)  # [T, C]
    used = visible.any(0)  # [C]: rows some query reads; the others may hold anything
    k = torch.where(used[:, None, None], k_cache.to(acc), 0.0)
    v = torch.where(used[:, None, None], v_cache.to(acc), 0.0)
    scores = torch.einsum("tkgd,ckd->kgtc", q.to(acc).reshape(num_q, num_kv_heads, group, dim), k) * scale
    scores = scores.masked_fill(~visible, NEG_INF)
    lse = torch.logsumexp(scores, dim=-1)  # [Hkv, G, T], -inf for rows without keys
    probs = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    attended = torch.einsum("kgtc,ckd->tkgd", probs, v).reshape(num_q, num_heads, dim)
    lse = lse.permute(2, 0, 1).reshape(num_q, num_heads)
    if out is None:
        out = attended.to(q.dtype)
    else:
        out.copy_(attended)
    if lse_out is None:
        lse_out = lse
    else:
        lse_out.copy_(lse)
    return out, lse_out
