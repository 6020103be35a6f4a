"""`ring` and `zigzag_ring`: exact ring attention, K/V passed around the ring, overlapped with compute.

Each rank starts with its local causal block, then receives the K/V of rank - 1, rank - 2, ... while
it computes on the K/V it already has, and LSE-merges every partial into its rows. Which local rows
see which received keys is planned from global positions (`plan_ring_schedule`): with contiguous
chunks (`ring`) rank r uses the K/V of ranks < r fully; with the zigzag layout (`zigzag_ring`, rank r
holds chunks r and 2W-1-r) every step is one rectangle of equal size on every rank, which balances
the causal work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spava.attention.base import AttentionMethod, AttnContext
from spava.attention.merge import merge_partials_, start_accumulator
from spava.plan.sequence import (SequencePlan, assemble_exact_plan, balanced_bounds, check_request, plan_contiguous,
                                 zigzag_owner)


def plan_ring(num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
    """[chunk r] of W contiguous chunks of the prompt; the last token lives on rank W-1."""
    return plan_contiguous("ring", num_tokens, num_query_tokens, world_size, rank)


def plan_zigzag(num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
    """[chunk r | chunk 2W-1-r] of 2W chunks of the prompt; the last token lives on rank 0."""
    check_request(num_tokens, num_query_tokens, world_size, rank)
    if num_tokens < 2 * world_size:
        raise ValueError(
            f"zigzag_ring: {num_tokens} tokens cannot fill {2 * world_size} chunks; use fewer ranks or ring"
        )
    chunks = balanced_bounds(0, num_tokens, 2 * world_size)
    owners = [zigzag_owner(i, world_size) for i in range(2 * world_size)]
    return assemble_exact_plan("zigzag_ring", num_tokens, num_query_tokens, world_size, rank, chunks, owners, 0)


@dataclass(frozen=True)
class RingBlock:
    """Local rows [q_start, q_stop) attend (non-causally) to the first `num_keys` received keys."""

    q_start: int
    q_stop: int
    num_keys: int


def plan_ring_schedule(plan: SequencePlan, peer_plans: tuple[SequencePlan, ...]) -> tuple[tuple[RingBlock, ...], ...]:
    """Blocks to compute at each ring step s = 1..W-1 (K/V of rank (rank - s) mod W).

    A peer's local order is increasing in global position, so the peer keys that lie before a local
    segment are a prefix of the peer's buffer; consecutive local segments with the same prefix share
    one kernel call.
    """
    schedule = []
    for step in range(1, plan.world_size):
        peer = peer_plans[(plan.rank - step) % plan.world_size]
        blocks: list[RingBlock] = []
        for index, seg in enumerate(plan.segments):
            num_keys = sum(p.length for p in peer.segments if p.stop <= seg.start)
            q_start, q_stop = plan.local_range(index)
            if num_keys == 0:
                continue
            if blocks and blocks[-1].q_stop == q_start and blocks[-1].num_keys == num_keys:
                blocks[-1] = RingBlock(blocks[-1].q_start, q_stop, num_keys)
            else:
                blocks.append(RingBlock(q_start, q_stop, num_keys))
        schedule.append(tuple(blocks))
    return tuple(schedule)


def ring_attn_forward(q, k, v, ctx: AttnContext) -> torch.Tensor:
    """Exact causal attention for the local rows; q `[S, Hq, D]`, k/v `[S, Hkv, D]` -> `[S, Hq, D]`."""
    plan, comm, backend, peer_plans = ctx.plan, ctx.comm, ctx.backend, ctx.peer_plans
    schedule = plan_ring_schedule(plan, peer_plans)
    cur_k, cur_v = k, v
    out = lse = None
    for step in range(plan.world_size):
        is_last = step == plan.world_size - 1
        if not is_last:
            src = (plan.rank - step - 1) % plan.world_size
            shape = (peer_plans[src].num_local_tokens, *k.shape[1:])
            next_k, next_v = k.new_empty(shape), v.new_empty(shape)
            ring = comm.ring()
            ring.send_recv(cur_k, next_k)
            ring.send_recv(cur_v, next_v)
            ring.commit()
        if step == 0:
            out, lse = start_accumulator(*backend.attend(q, k, v, is_causal=True, scale=ctx.scale))
        else:
            for block in schedule[step - 1]:
                rows = slice(block.q_start, block.q_stop)
                partial = backend.attend(
                    q[rows], cur_k[: block.num_keys], cur_v[: block.num_keys], is_causal=False, scale=ctx.scale
                )
                merge_partials_(out[rows], lse[rows], *partial)
        if not is_last:
            ring.wait()
            cur_k, cur_v = next_k, next_v
    return out.to(q.dtype)


class RingAttention(AttentionMethod):
    name = "ring"
    is_exact = True
    layout = "[chunk r] of W contiguous chunks of the prompt"

    def plan(self, num_tokens, num_query_tokens, world_size, rank) -> SequencePlan:
        return plan_ring(num_tokens, num_query_tokens, world_size, rank)

    def forward(self, q, k, v, ctx: AttnContext, layer_idx: int = 0) -> torch.Tensor:
        return ring_attn_forward(q, k, v, ctx)


class ZigzagRingAttention(RingAttention):
    name = "zigzag_ring"
    layout = "[chunk r | chunk 2W-1-r] of 2W chunks of the prompt"

    def plan(self, num_tokens, num_query_tokens, world_size, rank) -> SequencePlan:
        return plan_zigzag(num_tokens, num_query_tokens, world_size, rank)
