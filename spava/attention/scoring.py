"""Choosing the passing tokens: score local keys, smooth, take the top-k per KV head.

Scorers map (q_query `[Lq, Hq, D]`, k `[S, Hkv, D]`) -> scores `[S, Hkv]` float32:
  query_aware  Spava's training-free score: the query rows' queries averaged over each GQA group
               and over the query tokens (one summary query per KV head), dotted with every key in
               float32. Equal to averaging the per-token dot products (the reference recipe), as one GEMV.
  key_norm     query-agnostic: the L2 norm of each key (a cheap ablation / APB stand-in).
Users may pass "pkg.module:function" with the same signature.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from spava.objects import load_object

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def query_aware_scores(q_query: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Summary-query dot products: q `[Lq, Hq, D]`, k `[S, Hkv, D]` -> `[S, Hkv]` float32."""
    if q_query.shape[0] == 0:
        raise ValueError("the query_aware scorer needs query tokens; the prompt has an empty query block")
    num_kv_heads = k.shape[1]
    group = q_query.shape[1] // num_kv_heads
    summary = q_query.float().view(q_query.shape[0], num_kv_heads, group, -1).mean(dim=(0, 2))
    return torch.einsum("shd,hd->sh", k.float(), summary)


def key_norm_scores(q_query: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Query-agnostic key norms: k `[S, Hkv, D]` -> `[S, Hkv]` float32."""
    return torch.linalg.vector_norm(k.float(), dim=-1)


_BUILTIN_SCORERS = {"query_aware": query_aware_scores, "key_norm": key_norm_scores}


def get_scorer(name: str) -> Scorer:
    if name in _BUILTIN_SCORERS:
        return _BUILTIN_SCORERS[name]
    if ":" not in name:
        raise ValueError(f"unknown scorer {name!r}; choose query_aware, key_norm or 'pkg.module:function'")
    return load_object(name, "prefill.attention.scorer")


def pool_scores(scores: torch.Tensor, window: int) -> torch.Tensor:
    """Max-pool `[S, Hkv]` along S (stride 1, same length). Call it per chunk so it never bleeds."""
    if window <= 1 or scores.shape[0] == 0:
        return scores
    pooled = F.max_pool1d(scores.t().unsqueeze(0), window, stride=1, padding=window // 2)
    return pooled[0].t()


def select_into(
    scores: torch.Tensor, num_select: int, k: torch.Tensor, v: torch.Tensor, out_k: torch.Tensor, out_v: torch.Tensor
) -> None:
    """Top-`num_select` tokens per KV head of one chunk, written into out_k/out_v rows [:num_select].

    Args:
        scores: `[B, Hkv]` pooled scores of the chunk; k, v: `[B, Hkv, D]` the chunk's keys/values.
        out_k, out_v: `[slot_len, Hkv, D]` send buffers (slot_len >= num_select).
    """
    if num_select == 0:
        return
    index = scores.topk(num_select, dim=0, sorted=False).indices
    index = index.unsqueeze(-1).expand(-1, -1, k.shape[-1])
    torch.gather(k, 0, index, out=out_k[:num_select])
    torch.gather(v, 0, index, out=out_v[:num_select])
