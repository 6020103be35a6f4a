"""`spava`: Spava / APB-V (arXiv 2601.21444), the method this project is named after.

Layout on rank r of W: [anchor share r | chunk r | chunk 2W-1-r | query] (zigzag, 2W virtual
hosts). The anchor is sharded: each rank computes 1/W of its rows (the reference recomputed the
whole anchor on every host) and every layer all-gathers the shares' K/V.
Per layer:
  0. the anchor shares' K/V are all-gathered (asynchronously) into the passing buffers;
  1. query-aware scores of the local chunk keys (summary query per KV head, float32), max-pooled
     within each chunk, top-k per KV head (`spava.attention.scoring`);
  2. the selection of chunk r, then of chunk 2W-1-r, is all-gathered asynchronously into buffers
     ordered [sel(2W-1-s) for s in ranks | anchor | sel(s) for s in ranks], so the non-local keys
     of chunk r are [anchor | slots W..W+r-1] and those of chunk 2W-1-r are [slots r+1..W-1 |
     anchor | slots W..2W-1]: both one contiguous view;
  3. the query rows' exact partial over the owned keys is computed and its all-gather started;
  4. the anchor share rows attend causally to the gathered anchor; chunk r attends causally to
     itself and, once its selections arrived (overlapping the second gather), to its non-local
     view; the two partials are merged by one fused kernel straight into the output; chunk
     2W-1-r likewise;
  5. the query rows' partials are LSE-merged (exact, identical on all ranks).
With a passing budget that covers whole chunks every context row sees all earlier tokens, and the
method equals exact causal attention.
"""

from __future__ import annotations

import torch

from spava.attention.approx import finish_query_rows, launch_query_rows, log_selection, query_start, select_chunk
from spava.attention.backend import attend_pieces
from spava.attention.base import AttentionMethod, AttnContext
from spava.attention.config import num_selected, resolve_anchor_len, resolve_passing_len
from spava.attention.passing import PassingExchange, PassingSlots
from spava.plan.sequence import (ROLE_ANCHOR, ROLE_CHUNK, SequencePlan, assemble_approx_plan, balanced_bounds,
                                 check_request, zigzag_owner)


def anchor_shard_len(anchor_len: int, world_size: int) -> int:
    """Rows of one anchor share: ceil(A / W); the last shares may be shorter or empty."""
    return -(-anchor_len // world_size)


def anchor_shard(anchor_len: int, world_size: int, rank: int) -> tuple[int, int]:
    """The 1/W share of the anchor that this rank computes and owns: [r*ceil(A/W), ...)."""
    shard = anchor_shard_len(anchor_len, world_size)
    return min(rank * shard, anchor_len), min((rank + 1) * shard, anchor_len)


def plan_spava(num_tokens: int, num_query_tokens: int, world_size: int, rank: int, anchor_len: int) -> SequencePlan:
    """2W zigzag chunks of the context after the anchor, replicated query; the anchor is sharded:
    rank r computes (and owns) only its 1/W share of the anchor rows, and every layer all-gathers
    the shares' K/V, instead of every rank recomputing the whole anchor."""
    check_request(num_tokens, num_query_tokens, world_size, rank)
    context_len = num_tokens - num_query_tokens
    if anchor_len < 0 or context_len - anchor_len < 2 * world_size:
        raise ValueError(
            f"spava: a {context_len}-token context with anchor_len={anchor_len} leaves fewer than "
            f"{2 * world_size} tokens for the 2W chunks; lower prefill.attention.anchor_len / anchor_ratio "
            "or use fewer ranks"
        )
    chunks = balanced_bounds(anchor_len, context_len, 2 * world_size)
    owners = [zigzag_owner(i, world_size) for i in range(2 * world_size)]
    held = [chunks[i] for i, owner in enumerate(owners) if owner == rank]
    share = anchor_shard(anchor_len, world_size, rank)
    return assemble_approx_plan(
        "spava", num_tokens, num_query_tokens, world_size, rank, anchor_len, chunks, owners, (share, *held),
        anchor_rows=share,
    )


def spava_slots(plan: SequencePlan, passing_len: int, round_to: int) -> PassingSlots:
    """Slot s < W: selection of chunk 2W-1-s (rank s's second chunk); slot W+s: chunk s."""
    world_size = plan.world_size
    lengths = [stop - start for start, stop in plan.chunks]
    second = [num_selected(passing_len, lengths[2 * world_size - 1 - s], round_to) for s in range(world_size)]
    first = [num_selected(passing_len, lengths[s], round_to) for s in range(world_size)]
    return PassingSlots(tuple(second + first))


class SpavaAttention(AttentionMethod):
    name = "spava"
    is_exact = False
    layout = "[anchor share r | chunk r | chunk 2W-1-r | query], 2W chunks of the context after the anchor"
    default_passing_ratio = 1 / 128  # of the context length L, per chunk and KV head (the paper's)

    def plan(self, num_tokens, num_query_tokens, world_size, rank) -> SequencePlan:
        anchor_len = resolve_anchor_len(self.config, num_tokens - num_query_tokens)
        return plan_spava(num_tokens, num_query_tokens, world_size, rank, anchor_len)

    def forward(self, q, k, v, ctx: AttnContext, layer_idx: int = 0) -> torch.Tensor:
        plan, cfg = ctx.plan, self.config
        world_size, rank, anchor_len = plan.world_size, plan.rank, plan.anchor_len
        first, second = (plan.local_range(i) for i in plan.find(ROLE_CHUNK))
        out = torch.empty_like(q)
        slots = spava_slots(plan, resolve_passing_len(cfg, plan.context_len, layer_idx), cfg.round_to)
        # The anchor sits in the passing buffers between the two slot blocks, so that each chunk's
        # non-local keys ([anchor | passing of chunk r], [passing of the later chunks | anchor | ...])
        # are one contiguous view: two attention calls and one fused merge per chunk.
        exchange = PassingExchange(ctx.comm, slots, k, gap_before=world_size, gap_len=anchor_len)
        share_len = sum(plan.segments[i].length for i in plan.find(ROLE_ANCHOR))
        if anchor_len > 0:  # every rank computed K/V of its anchor share: gather the whole anchor
            exchange.launch_gap_gather(k[:share_len], v[:share_len], anchor_shard_len(anchor_len, world_size))
        if slots.slot_len > 0:
            q_query = q[query_start(plan):]
            for chunk, first_slot, slot in ((first, world_size, world_size + rank), (second, 0, rank)):
                send_k, send_v = exchange.send_buffers()
                chosen = select_chunk(cfg.scorer, cfg.pool_window, q_query, k, v, *chunk,
                                      slots.counts[slot], send_k, send_v)
                log_selection(ctx, layer_idx, *chunk, chosen)
                exchange.launch(first_slot, send_k, send_v)
        partial = launch_query_rows(q, k, v, ctx)
        self._anchor_rows(out, q, exchange, ctx)
        exchange.wait(world_size)
        self._chunk_rows(out, q, k, v, ctx, first, exchange.passing(world_size, world_size + rank, with_gap=True))
        exchange.wait(0)
        self._chunk_rows(out, q, k, v, ctx, second, exchange.passing(rank + 1, 2 * world_size, with_gap=True))
        finish_query_rows(out, partial, plan)
        return out

    @staticmethod
    def _anchor_rows(out, q, exchange: PassingExchange, ctx: AttnContext) -> None:
        """out[share] = this rank's anchor rows over the gathered anchor keys before them (causal)."""
        anchors = ctx.plan.find(ROLE_ANCHOR)
        if exchange.gap_len == 0:
            return
        exchange.wait_gap()
        if not anchors:
            return
        share = ctx.plan.segments[anchors[0]]
        gap_k, gap_v = exchange.gap()
        rows = slice(0, share.length)
        out[rows] = ctx.backend.attend(q[rows], gap_k[: share.stop], gap_v[: share.stop], is_causal=True,
                                       scale=ctx.scale)[0]

    @staticmethod
    def _chunk_rows(out, q, k, v, ctx, chunk, other_kv) -> None:
        """out[chunk] = chunk rows over their own keys (causal) and `other_kv` (anchor + passing)."""
        rows = slice(*chunk)
        pieces = [(k[rows], v[rows], True), (*other_kv, False)]
        attend_pieces(ctx.backend, q[rows], pieces, ctx.scale, out=out[rows])
