"""`star`: Star Attention (Acharya et al.) in spava's fused form.

Context: W blocks; every rank r > 0 prepends block 0 as its anchor and attends causally within
[anchor | block r], with no communication. Query rows: exact, by LSE-merging every rank's partial
over the block it owns (the anchor copies are not counted twice). The original runs the query as a
second pass; spava runs it in the same forward, which changes no result and saves a pass.
"""

from __future__ import annotations

import torch

from spava.attention.approx import causal_rows, finish_query_rows, launch_query_rows, query_start
from spava.attention.base import AttentionMethod, AttnContext
from spava.plan.sequence import SequencePlan, assemble_approx_plan, balanced_bounds, check_request


def plan_star(num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
    """W blocks of the context; block 0 is every other rank's anchor; the query is replicated."""
    check_request(num_tokens, num_query_tokens, world_size, rank)
    context_len = num_tokens - num_query_tokens
    if context_len < world_size:
        raise ValueError(f"star: a context of {context_len} tokens cannot fill {world_size} blocks")
    chunks = balanced_bounds(0, context_len, world_size)
    anchor_len = chunks[0][1] if world_size > 1 else 0
    owners = list(range(world_size))
    return assemble_approx_plan(
        "star", num_tokens, num_query_tokens, world_size, rank, anchor_len, chunks, owners, (chunks[rank],)
    )


class StarAttention(AttentionMethod):
    name = "star"
    is_exact = False
    layout = "r=0: [block 0 | query]; r>0: [anchor=block 0 | block r | query], W blocks of the context"

    def plan(self, num_tokens, num_query_tokens, world_size, rank) -> SequencePlan:
        return plan_star(num_tokens, num_query_tokens, world_size, rank)

    def forward(self, q, k, v, ctx: AttnContext, layer_idx: int = 0) -> torch.Tensor:
        out = torch.empty_like(q)
        partial = launch_query_rows(q, k, v, ctx)
        causal_rows(out, q, k, v, ctx, 0, query_start(ctx.plan))
        finish_query_rows(out, partial, ctx.plan)
        return out
