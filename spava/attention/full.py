"""`full`: dense causal attention on one rank, the reference every other method is checked against.

Layout: the whole prompt on one rank (`plan_full`; W must be 1).
"""

from __future__ import annotations

import torch

from spava.attention.base import AttentionMethod, AttnContext
from spava.attention.methods import available_methods
from spava.plan.sequence import SequencePlan, assemble_exact_plan, check_request


def plan_full(num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
    """[0, N) on the one rank."""
    check_request(num_tokens, num_query_tokens, world_size, rank)
    if world_size != 1:
        parallel = ", ".join(m for m in available_methods() if m != FullAttention.name)
        raise ValueError(
            f"attention 'full' runs on one rank, got world_size={world_size}: "
            f"set prefill.attention to a sequence-parallel method ({parallel})"
        )
    return assemble_exact_plan("full", num_tokens, num_query_tokens, 1, 0, ((0, num_tokens),), (0,), 0)


class FullAttention(AttentionMethod):
    name = "full"
    is_exact = True
    layout = "[0, N) on one rank (W = 1)"

    def plan(self, num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
        return plan_full(num_tokens, num_query_tokens, world_size, rank)

    def forward(self, q, k, v, ctx: AttnContext, layer_idx: int = 0) -> torch.Tensor:
        out, _ = ctx.backend.attend(q, k, v, is_causal=True, scale=ctx.scale)
        return out
