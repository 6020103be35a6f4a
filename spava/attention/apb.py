"""`apb`: APB (Huang et al., ACL 2025) as run for video: contiguous split, anchor, passing blocks.

Context: W contiguous chunks. Rank 0 holds chunk 0 (which begins with the anchor); rank r > 0 holds
[anchor | chunk r]. Every rank scores its chunk (rank 0: without the anchor part), keeps the top-P
tokens per KV head and all-gathers them; chunk r then attends to [passing of chunks < r | anchor |
chunk r (causal)], anchor rows only to the anchor. Query rows are exact. The original chose passing
tokens with trained retaining heads, which are not available; the scorer is pluggable and defaults
to Spava's query-aware score. The query is run in the same forward (fused), not a second pass.
"""

from __future__ import annotations

import torch

from spava.attention.approx import (causal_rows, finish_query_rows, launch_query_rows, log_selection, query_start,
                                   select_chunk)
from spava.attention.backend import attend_pieces
from spava.attention.base import AttentionMethod, AttnContext
from spava.attention.config import num_selected, resolve_anchor_len, resolve_passing_len
from spava.attention.passing import PassingExchange, PassingSlots
from spava.plan.sequence import ROLE_CHUNK, SequencePlan, assemble_approx_plan, balanced_bounds, check_request


def plan_apb(num_tokens: int, num_query_tokens: int, world_size: int, rank: int, anchor_len: int) -> SequencePlan:
    """W contiguous chunks of the context, the anchor on ranks > 0, the query replicated."""
    check_request(num_tokens, num_query_tokens, world_size, rank)
    context_len = num_tokens - num_query_tokens
    chunks = balanced_bounds(0, context_len, world_size)
    if chunks[0][1] - chunks[0][0] <= anchor_len or context_len < world_size:
        raise ValueError(
            f"apb: anchor_len={anchor_len} does not fit in the first of {world_size} chunks of a "
            f"{context_len}-token context; lower prefill.attention.anchor_len / anchor_ratio or use fewer ranks"
        )
    owners = list(range(world_size))
    return assemble_approx_plan(
        "apb", num_tokens, num_query_tokens, world_size, rank, anchor_len, chunks, owners, (chunks[rank],)
    )


def selectable_range(plan: SequencePlan) -> tuple[int, int]:
    """Local range of the tokens this rank may pass: its chunk, minus the anchor part on rank 0."""
    start, stop = plan.local_range(plan.find(ROLE_CHUNK)[0])
    return (start + plan.anchor_len, stop) if plan.rank == 0 else (start, stop)


def apb_slots(peer_plans, passing_len: int, round_to: int) -> PassingSlots:
    """Slot s = rank s's selection (chunk s)."""
    counts = []
    for peer in peer_plans:
        start, stop = selectable_range(peer)
        counts.append(num_selected(passing_len, stop - start, round_to))
    return PassingSlots(tuple(counts))


class APBAttention(AttentionMethod):
    name = "apb"
    is_exact = False
    layout = "r=0: [chunk 0 | query]; r>0: [anchor | chunk r | query], W chunks of the context"
    default_passing_ratio = 1 / 64  # of the context length L, per chunk and KV head (the paper's)

    def plan(self, num_tokens, num_query_tokens, world_size, rank) -> SequencePlan:
        anchor_len = resolve_anchor_len(self.config, num_tokens - num_query_tokens)
        return plan_apb(num_tokens, num_query_tokens, world_size, rank, anchor_len)

    def forward(self, q, k, v, ctx: AttnContext, layer_idx: int = 0) -> torch.Tensor:
        plan, cfg = ctx.plan, self.config
        out = torch.empty_like(q)
        passing_len = resolve_passing_len(cfg, plan.context_len, layer_idx)
        slots = apb_slots(ctx.peer_plans, passing_len, cfg.round_to)
        exchange = PassingExchange(ctx.comm, slots, k) if slots.slot_len > 0 else None
        q_query = q[query_start(plan):]
        if exchange is not None:
            send_k, send_v = exchange.send_buffers()
            start, stop = selectable_range(plan)
            chosen = select_chunk(cfg.scorer, cfg.pool_window, q_query, k, v, start, stop,
                                  slots.counts[plan.rank], send_k, send_v)
            log_selection(ctx, layer_idx, start, stop, chosen)
            exchange.launch(0, send_k, send_v)
        partial = launch_query_rows(q, k, v, ctx)
        chunk_start, chunk_stop = plan.local_range(plan.find(ROLE_CHUNK)[0])
        causal_rows(out, q, k, v, ctx, 0, chunk_start)  # anchor rows (ranks > 0)
        pieces = [(k[:chunk_stop], v[:chunk_stop], True)]
        if exchange is not None:
            exchange.wait(0)
            pieces.append((*exchange.passing(0, plan.rank), False))
        rows = slice(chunk_start, chunk_stop)
        attend_pieces(ctx.backend, q[rows], pieces, ctx.scale, out=out[rows])
        finish_query_rows(out, partial, plan)
        return out
