"""`spava`: Spava / APB-V (arXiv 2601.21444), the method this project is named after.

Layout on rank r of W: [anchor | chunk r | chunk 2W-1-r | query] (zigzag, 2W virtual hosts).
Per layer:
  1. query-aware scores of the local chunk keys (summary query per KV head, float32), max-pooled
     within each chunk, top-k per KV head (`spava.attention.scoring`);
  2. the selection of chunk r, then of chunk 2W-1-r, is all-gathered asynchronously into slot
     buffers ordered [sel(2W-1-s) for s in ranks | sel(s) for s in ranks], so the passing block of
     chunk r is slots [W, W+r) and that of chunk 2W-1-r is slots [r+1, 2W): both contiguous views;
  3. the query rows' exact partial over the owned keys is computed and its all-gather started;
  4. anchor rows attend causally within the anchor; chunk r attends to [passing | anchor | chunk r]
     once its selections arrived (overlapping the second gather); chunk 2W-1-r likewise;
  5. the query rows' partials are LSE-merged (exact, identical on all ranks).
With a passing budget that covers whole chunks every context row sees all earlier tokens, and the
method equals exact causal attention.
"""

from __future__ import annotations

import torch

from spava.attention.approx import causal_rows, finish_query_rows, launch_query_rows, query_start, select_chunk
from spava.attention.backend import attend_pieces
from spava.attention.base import AttentionMethod, AttnContext
from spava.attention.config import num_selected, resolve_anchor_len, resolve_passing_len
from spava.attention.passing import PassingExchange, PassingSlots
from spava.plan.sequence import ROLE_CHUNK, SequencePlan, plan_spava


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

    def plan(self, num_tokens, num_query_tokens, world_size, rank) -> SequencePlan:
        anchor_len = resolve_anchor_len(self.config, num_tokens - num_query_tokens)
        return plan_spava(num_tokens, num_query_tokens, world_size, rank, anchor_len)

    def forward(self, q, k, v, ctx: AttnContext, layer_idx: int = 0) -> torch.Tensor:
        plan, cfg = ctx.plan, self.config
        world_size, rank = plan.world_size, plan.rank
        first, second = (plan.local_range(i) for i in plan.find(ROLE_CHUNK))
        out = torch.empty_like(q)
        slots = spava_slots(plan, resolve_passing_len(cfg, plan.context_len, layer_idx), cfg.round_to)
        exchange = PassingExchange(ctx.comm, slots, k) if slots.slot_len > 0 else None
        if exchange is not None:
            q_query = q[query_start(plan):]
            for chunk, first_slot, slot in ((first, world_size, world_size + rank), (second, 0, rank)):
                send_k, send_v = exchange.send_buffers()
                select_chunk(cfg.scorer, cfg.pool_window, q_query, k, v, *chunk,
                             slots.counts[slot], send_k, send_v)
                exchange.launch(first_slot, send_k, send_v)
        partial = launch_query_rows(q, k, v, ctx)
        anchor_len = plan.anchor_len
        causal_rows(out, q, k, v, ctx, 0, anchor_len)
        self._chunk_rows(out, q, k, v, ctx, first, [(k[: first[1]], v[: first[1]], True)],
                         exchange, world_size, (world_size, world_size + rank))
        anchor = [(k[:anchor_len], v[:anchor_len], False)]
        self._chunk_rows(out, q, k, v, ctx, second, [(k[second[0]: second[1]], v[second[0]: second[1]], True)] + anchor,
                         exchange, 0, (rank + 1, 2 * world_size))
        finish_query_rows(out, partial, plan)
        return out

    @staticmethod
    def _chunk_rows(out, q, k, v, ctx, chunk, local_pieces, exchange, first_slot, passing_slots) -> None:
        """out[chunk] = chunk rows over their local key pieces plus the passing slots (once arrived)."""
        pieces = list(local_pieces)
        if exchange is not None:
            exchange.wait(first_slot)
            pieces.append((*exchange.passing(*passing_slots), False))
        rows = slice(*chunk)
        out[rows] = attend_pieces(ctx.backend, q[rows], pieces, ctx.scale)[0]
