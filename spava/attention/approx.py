"""Pieces shared by the approximate methods (star, apb, spava).

Their local sequence ends with the replicated query block. Query rows get exact attention: each
rank attends them to the keys it owns (`SequencePlan.owned`: its chunks, its anchor share, and on the
decode rank the query itself, causally), then the W partials are all-gathered and LSE-merged.
"""

from __future__ import annotations

import torch

from spava.attention.base import AttnContext
from spava.attention.exact import DistributedPartial, owned_pieces
from spava.attention.scoring import get_scorer, pool_scores
from spava.plan.sequence import SequencePlan


def query_start(plan: SequencePlan) -> int:
    """Local index of the first query row."""
    return plan.num_local_tokens - plan.num_query_tokens


def launch_query_rows(q, k, v, ctx: AttnContext) -> DistributedPartial | None:
    """Start the exact attention of the query rows (None when the prompt has no query block).

    Only the decode rank holds the query keys, and only there are they masked causally: the other
    ranks' keys all precede the query, so they attend non-causally (the reference code used a
    causal mask on every rank, hiding trailing chunk keys from early query rows).
    """
    plan = ctx.plan
    if plan.num_query_tokens == 0:
        return None
    start = query_start(plan)
    pieces = owned_pieces(k, v, plan.owned_local_ranges())
    partial = DistributedPartial(ctx.comm)
    partial.launch(ctx.backend, q[start:], pieces, ctx.scale)
    return partial


def finish_query_rows(out: torch.Tensor, partial: DistributedPartial | None, plan: SequencePlan) -> None:
    if partial is not None:
        out[query_start(plan):] = partial.finish()[0].to(out.dtype)


def causal_rows(out, q, k, v, ctx: AttnContext, start: int, stop: int) -> None:
    """out[start:stop] = rows [start, stop) attending causally to local keys [0, stop)."""
    if stop > start:
        out[start:stop] = ctx.backend.attend(q[start:stop], k[:stop], v[:stop], is_causal=True, scale=ctx.scale)[0]


def select_chunk(scorer_name, window, q_query, k, v, start, stop, num_select, send_k, send_v):
    """Score local keys [start, stop) against the query, pool within the range, keep the top ones.

    Writes the chosen K/V rows into send_k/send_v rows [:num_select] and returns (pooled scores
    `[stop - start, Hkv]` float32, chosen rows `[num_select, Hkv]` int64 relative to `start`), or
    None when nothing is selected. The default scorer runs as one fused score + max-pool kernel and
    one K/V packing kernel on CUDA (`spava_kernels`; torch references elsewhere, identical results).
    """
    if num_select == 0:
        return None
    from spava_kernels.dispatch import pack_selected, score_and_pool, select_topk

    keys, values = k[start:stop], v[start:stop]
    if scorer_name == "query_aware":
        pooled = score_and_pool(q_query, keys, window)
    else:
        pooled = pool_scores(get_scorer(scorer_name)(q_query, keys), window)
    index = select_topk(pooled, num_select)
    pack_selected(keys, values, index, send_k, send_v)
    return pooled, index


def log_selection(ctx: AttnContext, layer_idx: int, start: int, stop: int, chosen) -> None:
    """Append a selection of local rows [start, stop) to `ctx.selections` when a log is attached."""
    if ctx.selections is not None and chosen is not None:
        ctx.selections.add(ctx.plan, layer_idx, start, stop, *chosen)
