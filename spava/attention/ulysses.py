"""`ulysses`: exact attention by all-to-all head sharding (DeepSpeed-Ulysses style).

Each rank holds a contiguous chunk of the sequence with all heads. One all-to-all per tensor turns
that into the whole sequence for a slice of the query heads (and the KV heads those query heads
read), a dense causal attention runs locally, and one all-to-all turns the output back. Head slices
are balanced (sizes differ by at most one), so the head count need not divide the world size; KV
heads are replicated to every rank whose query heads read them (GQA with W > Hkv). It cannot work
when there are fewer query heads than ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spava.attention.base import AttentionMethod, AttnContext
from spava.plan.sequence import SequencePlan, balanced_bounds, plan_contiguous


def plan_ulysses(num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
    """[chunk r] of W contiguous chunks of the prompt (heads are sharded inside `forward`)."""
    return plan_contiguous("ulysses", num_tokens, num_query_tokens, world_size, rank)


@dataclass(frozen=True)
class HeadShard:
    """Query heads [q_start, q_stop) of one rank and the KV heads [kv_start, kv_stop) they read."""

    q_start: int
    q_stop: int
    kv_start: int
    kv_stop: int


def plan_head_shards(num_heads: int, num_kv_heads: int, world_size: int) -> tuple[HeadShard, ...]:
    """Balanced query-head slices per rank and the KV heads each slice needs (pure)."""
    if num_heads < world_size:
        raise ValueError(
            f"ulysses shards heads over ranks: {num_heads} query heads cannot cover {world_size} ranks; "
            "use ring or zigzag_ring, or fewer ranks"
        )
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads cannot share {num_kv_heads} KV heads evenly")
    group = num_heads // num_kv_heads
    shards = []
    for q_start, q_stop in balanced_bounds(0, num_heads, world_size):
        shards.append(HeadShard(q_start, q_stop, q_start // group, (q_stop - 1) // group + 1))
    return tuple(shards)


def _kv_for_heads(kv: torch.Tensor, shard: HeadShard, group: int) -> torch.Tensor:
    """KV `[N, kv_stop-kv_start, D]` -> the KV each query head of `shard` reads, as GQA or per-head."""
    num_q = shard.q_stop - shard.q_start
    num_kv = shard.kv_stop - shard.kv_start
    heads = torch.arange(shard.q_start, shard.q_stop) // group - shard.kv_start
    is_uniform = num_q % num_kv == 0 and torch.equal(heads, torch.arange(num_kv).repeat_interleave(num_q // num_kv))
    return kv if is_uniform else kv.index_select(1, heads.to(kv.device))


def _scatter_heads(x, shards, head_range, seq_lens, comm) -> torch.Tensor:
    """`[S_local, H, D]` (sequence shard) -> `[N, h_me, D]` (head shard) by one all-to-all."""
    head_dim = x.shape[-1]
    send = torch.cat([x[:, a:b].reshape(-1) for a, b in (head_range(s) for s in shards)])
    my_start, my_stop = head_range(shards[comm.rank])
    num_my_heads = my_stop - my_start
    recv = x.new_empty(sum(seq_lens) * num_my_heads * head_dim)
    in_splits = [x.shape[0] * (b - a) * head_dim for a, b in (head_range(s) for s in shards)]
    out_splits = [n * num_my_heads * head_dim for n in seq_lens]
    comm.all_to_all(recv, send, out_splits, in_splits)
    return recv.view(sum(seq_lens), num_my_heads, head_dim)


def _gather_heads(out, shards, seq_lens, comm, num_local: int) -> torch.Tensor:
    """`[N, h_me, D]` (head shard) -> `[S_local, Hq, D]` (sequence shard), the inverse all-to-all."""
    num_my_heads, head_dim = out.shape[1], out.shape[2]
    send = out.reshape(-1)
    in_splits = [n * num_my_heads * head_dim for n in seq_lens]
    out_splits = [num_local * (s.q_stop - s.q_start) * head_dim for s in shards]
    recv = out.new_empty(sum(out_splits))
    comm.all_to_all(recv, send, out_splits, in_splits)
    pieces = torch.split(recv, out_splits)
    heads = [p.view(num_local, s.q_stop - s.q_start, head_dim) for p, s in zip(pieces, shards)]
    return torch.cat(heads, dim=1)


class UlyssesAttention(AttentionMethod):
    name = "ulysses"
    is_exact = True
    layout = "[chunk r] of W contiguous chunks of the prompt; heads sharded during attention"

    def plan(self, num_tokens, num_query_tokens, world_size, rank) -> SequencePlan:
        return plan_ulysses(num_tokens, num_query_tokens, world_size, rank)

    def forward(self, q, k, v, ctx: AttnContext, layer_idx: int = 0) -> torch.Tensor:
        num_heads, num_kv_heads = q.shape[1], k.shape[1]
        shards = plan_head_shards(num_heads, num_kv_heads, ctx.plan.world_size)
        seq_lens = [p.num_local_tokens for p in ctx.peer_plans]
        q_full = _scatter_heads(q, shards, lambda s: (s.q_start, s.q_stop), seq_lens, ctx.comm)
        k_full = _scatter_heads(k, shards, lambda s: (s.kv_start, s.kv_stop), seq_lens, ctx.comm)
        v_full = _scatter_heads(v, shards, lambda s: (s.kv_start, s.kv_stop), seq_lens, ctx.comm)
        mine = shards[ctx.comm.rank]
        group = num_heads // num_kv_heads
        k_full, v_full = _kv_for_heads(k_full, mine, group), _kv_for_heads(v_full, mine, group)
        out, _ = ctx.backend.attend(q_full, k_full, v_full, is_causal=True, scale=ctx.scale)
        return _gather_heads(out, shards, seq_lens, ctx.comm, q.shape[0])
