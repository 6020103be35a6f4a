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
from spava_kernels.reference import pool_scores, query_aware_scores, select_into  # noqa: F401 - the scoring math

from spava.objects import load_object

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


