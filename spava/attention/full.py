"""`full`: dense causal attention on one rank, the reference every other method is checked against."""

from __future__ import annotations

import torch

from spava.attention.base import AttentionMethod, AttnContext
from spava.plan.sequence import SequencePlan, plan_full


class FullAttention(AttentionMethod):
    name = "full"
    is_exact = True

    def plan(self, num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
        return plan_full(num_tokens, num_query_tokens, world_size, rank)

    def forward(self, q, k, v, ctx: AttnContext, layer_idx: int = 0) -> torch.Tensor:
        out, _ = ctx.backend.attend(q, k, v, is_causal=True, scale=ctx.scale)
        return out
