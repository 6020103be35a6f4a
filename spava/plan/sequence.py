"""Sequence split plans: which global tokens each rank holds, in which local order, and what it owns.

Pure functions of (num_tokens N, num_query_tokens Lq, world_size W, rank, sizes); no torch, no
communication. The runtime (slicing ids, embeddings, M-RoPE positions), every attention method and
the tests call these same functions, so nobody re-derives a layout by hand.

Vocabulary (global token indices, half-open ranges):
  context   [0, L) with L = N - Lq; the query block is [L, N) (question + assistant prefix).
  anchor    [0, A): the first A context tokens, replicated on the ranks that need it.
  chunk     one piece of the split; `SequencePlan.chunks` lists every chunk of the request in global
            order and `chunk_owner` the rank holding it.
  owned     the ranges whose K/V this rank contributes exactly once to exact attention (the query
            rows, decoding) and keeps in its KV cache; over all ranks they tile [0, N) exactly.

Layouts per method (rank r of W):
  full         [0, N)                                          (W must be 1)
  ring/ulysses [chunk r]                   W contiguous chunks of N
  zigzag_ring  [chunk r | chunk 2W-1-r]    2W contiguous chunks of N
  star         r=0: [block 0 | query]; r>0: [anchor=block 0 | block r | query]   W blocks of L
  apb          r=0: [chunk 0 | query]; r>0: [anchor | chunk r | query]           W chunks of L
  spava        [anchor share r | chunk r | chunk 2W-1-r | query]   anchor (1/W per rank) + 2W chunks of L - A
Chunks are balanced: lengths differ by at most one token (the reference put the remainder on the
last chunk; balancing keeps every rank's load within one token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ROLE_TOKENS = "tokens"  # a plain piece of the sequence (exact methods)
ROLE_ANCHOR = "anchor"
ROLE_CHUNK = "chunk"
ROLE_QUERY = "query"

EXACT_LAYOUTS = ("full", "ring", "zigzag_ring", "ulysses")
APPROX_LAYOUTS = ("star", "apb", "spava")


@dataclass(frozen=True)
class Segment:
    """A run of consecutive global tokens held by one rank.

    Attributes:
        role: one of "tokens", "anchor", "chunk", "query".
        start, stop: global half-open token range.
        chunk_id: index into `SequencePlan.chunks` for role "chunk"/"tokens", else -1.
    """

    role: str
    start: int
    stop: int
    chunk_id: int = -1

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class SequencePlan:
    """Frozen plan of one rank's share of one request.

    `segments` are in local order; local index i of the rank's tensors is global token
    `local_token_ids()[i]`. Local order is increasing in global position for every layout, so a
    causal mask over local indices equals the causal mask over global positions.
    """

    method: str
    num_tokens: int
    num_query_tokens: int
    world_size: int
    rank: int
    anchor_len: int
    segments: tuple[Segment, ...]
    chunks: tuple[tuple[int, int], ...]
    chunk_owner: tuple[int, ...]
    owned: tuple[tuple[int, int], ...]
    decode_rank: int
    _offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        offsets, total = [], 0
        for seg in self.segments:
            offsets.append(total)
            total += seg.length
        object.__setattr__(self, "_offsets", tuple(offsets))

    @property
    def context_len(self) -> int:
        return self.num_tokens - self.num_query_tokens

    @property
    def num_local_tokens(self) -> int:
        return sum(seg.length for seg in self.segments)

    def local_range(self, index: int) -> tuple[int, int]:
        """Local [start, stop) of `segments[index]`."""
        start = self._offsets[index]
        return start, start + self.segments[index].length

    def find(self, role: str) -> list[int]:
        """Indices into `segments` of every segment with this role, in local order."""
        return [i for i, seg in enumerate(self.segments) if seg.role == role]

    def to_local(self, start: int, stop: int) -> tuple[int, int]:
        """Map a global range that lies inside one local segment to local coordinates."""
        for i, seg in enumerate(self.segments):
            if seg.start <= start and stop <= seg.stop:
                offset = self._offsets[i] - seg.start
                return start + offset, stop + offset
        raise ValueError(f"global range [{start}, {stop}) is not held by rank {self.rank}")

    def owned_local_ranges(self) -> list[tuple[int, int]]:
        """Local ranges of the owned tokens (KV cache and exact partial attention), local order.

        Ranges that touch locally are merged so that callers issue as few kernels as possible.
        """
        merged: list[tuple[int, int]] = []
        for start, stop in sorted(self.to_local(a, b) for a, b in self.owned if b > a):
            if merged and merged[-1][1] == start:
                merged[-1] = (merged[-1][0], stop)
            else:
                merged.append((start, stop))
        return merged

    def global_ranges(self) -> list[tuple[int, int]]:
        return [(seg.start, seg.stop) for seg in self.segments]

    def local_token_ids(self) -> "torch.Tensor":
        """Global index of every local token: int64 `[num_local_tokens]`."""
        import torch

        pieces = [torch.arange(seg.start, seg.stop) for seg in self.segments]
        return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)

    def slice_local(self, tensor: "torch.Tensor", dim: int = 0) -> "torch.Tensor":
        """Take this rank's tokens, in local order, from a per-token global tensor.

        Works for ids `[N]`, embeddings `[N, hidden]` and M-RoPE positions `[3, N]` (dim=1): the
        positions are sliced from the global tensor, never recomputed.
        """
        if tensor.shape[dim] != self.num_tokens:
            raise ValueError(
                f"tensor has {tensor.shape[dim]} tokens along dim {dim}, plan expects {self.num_tokens}"
            )
        pieces = [tensor.narrow(dim, seg.start, seg.length) for seg in self.segments]
        import torch

        return torch.cat(pieces, dim=dim)


def ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def balanced_bounds(start: int, stop: int, num_parts: int) -> tuple[tuple[int, int], ...]:
    """Split [start, stop) into `num_parts` consecutive pieces whose lengths differ by <= 1."""
    total = stop - start
    base, extra = divmod(total, num_parts)
    bounds, cursor = [], start
    for part in range(num_parts):
        length = base + (1 if part < extra else 0)
        bounds.append((cursor, cursor + length))
        cursor += length
    return tuple(bounds)


def _check_common(num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    if num_tokens < 1:
        raise ValueError(f"the prompt is empty (num_tokens={num_tokens})")
    if not 0 <= num_query_tokens <= num_tokens:
        raise ValueError(f"num_query_tokens={num_query_tokens} must lie in [0, {num_tokens}]")


def _plan_exact(method, num_tokens, num_query_tokens, world_size, rank, chunks, owners, decode_rank):
    held = [i for i, owner in enumerate(owners) if owner == rank]
    segments = tuple(Segment(ROLE_TOKENS, *chunks[i], chunk_id=i) for i in held)
    return SequencePlan(
        method=method,
        num_tokens=num_tokens,
        num_query_tokens=num_query_tokens,
        world_size=world_size,
        rank=rank,
        anchor_len=0,
        segments=segments,
        chunks=chunks,
        chunk_owner=tuple(owners),
        owned=tuple(chunks[i] for i in held),
        decode_rank=decode_rank,
    )


def plan_full(num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
    _check_common(num_tokens, num_query_tokens, world_size, rank)
    if world_size != 1:
        raise ValueError(
            f"attention 'full' runs on one rank, got world_size={world_size}: "
            "set prefill.attention to a sequence-parallel method (ring, zigzag_ring, ulysses, star, apb, spava)"
        )
    return _plan_exact("full", num_tokens, num_query_tokens, 1, 0, ((0, num_tokens),), (0,), 0)


def plan_contiguous(method: str, num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
    """W contiguous chunks of the whole prompt (ring, ulysses); the last token lives on rank W-1."""
    _check_common(num_tokens, num_query_tokens, world_size, rank)
    if num_tokens < world_size:
        raise ValueError(
            f"{method}: {num_tokens} tokens cannot be split over {world_size} ranks; use fewer ranks"
        )
    chunks = balanced_bounds(0, num_tokens, world_size)
    owners = list(range(world_size))
    return _plan_exact(method, num_tokens, num_query_tokens, world_size, rank, chunks, owners, world_size - 1)


def zigzag_owner(chunk_id: int, world_size: int) -> int:
    """Rank holding zigzag chunk `chunk_id` of 2W: rank r holds chunks r and 2W-1-r."""
    return chunk_id if chunk_id < world_size else 2 * world_size - 1 - chunk_id


def plan_zigzag(num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
    """2W chunks of the whole prompt, zigzag-assigned; the last token lives on rank 0."""
    _check_common(num_tokens, num_query_tokens, world_size, rank)
    if num_tokens < 2 * world_size:
        raise ValueError(
            f"zigzag_ring: {num_tokens} tokens cannot fill {2 * world_size} chunks; use fewer ranks or ring"
        )
    chunks = balanced_bounds(0, num_tokens, 2 * world_size)
    owners = [zigzag_owner(i, world_size) for i in range(2 * world_size)]
    return _plan_exact("zigzag_ring", num_tokens, num_query_tokens, world_size, rank, chunks, owners, 0)


def _plan_approx(method, num_tokens, num_query_tokens, world_size, rank, anchor_len, chunks, owners, owned,
                 anchor_rows=None):
    """Assemble an approximate-method plan: [anchor rows?] + held chunks + replicated query.

    `anchor_rows`: the global anchor range this rank computes (default: the whole anchor on ranks
    whose first chunk does not start the context)."""
    context_len = num_tokens - num_query_tokens
    held = [i for i, owner in enumerate(owners) if owner == rank]
    segments = []
    if anchor_rows is None:
        anchor_rows = (0, anchor_len) if anchor_len > 0 and chunks[held[0]][0] > 0 else (0, 0)
    if anchor_rows[1] > anchor_rows[0]:
        segments.append(Segment(ROLE_ANCHOR, *anchor_rows))
    segments.extend(Segment(ROLE_CHUNK, *chunks[i], chunk_id=i) for i in held)
    if num_query_tokens > 0:
        segments.append(Segment(ROLE_QUERY, context_len, num_tokens))
    decode_rank = 0
    if rank == decode_rank and num_query_tokens > 0:
        owned = (*owned, (context_len, num_tokens))
    return SequencePlan(
        method=method,
        num_tokens=num_tokens,
        num_query_tokens=num_query_tokens,
        world_size=world_size,
        rank=rank,
        anchor_len=anchor_len,
        segments=tuple(segments),
        chunks=chunks,
        chunk_owner=tuple(owners),
        owned=tuple(owned),
        decode_rank=decode_rank,
    )


def plan_star(num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
    """Star Attention: W blocks of the context; block 0 is every other rank's anchor."""
    _check_common(num_tokens, num_query_tokens, world_size, rank)
    context_len = num_tokens - num_query_tokens
    if context_len < world_size:
        raise ValueError(f"star: a context of {context_len} tokens cannot fill {world_size} blocks")
    chunks = balanced_bounds(0, context_len, world_size)
    anchor_len = chunks[0][1] if world_size > 1 else 0
    owners = list(range(world_size))
    return _plan_approx(
        "star", num_tokens, num_query_tokens, world_size, rank, anchor_len, chunks, owners, (chunks[rank],)
    )


def plan_apb(num_tokens: int, num_query_tokens: int, world_size: int, rank: int, anchor_len: int) -> SequencePlan:
    """APB as run for video: W contiguous chunks of the context, anchor on ranks > 0."""
    _check_common(num_tokens, num_query_tokens, world_size, rank)
    context_len = num_tokens - num_query_tokens
    chunks = balanced_bounds(0, context_len, world_size)
    if chunks[0][1] - chunks[0][0] <= anchor_len or context_len < world_size:
        raise ValueError(
            f"apb: anchor_len={anchor_len} does not fit in the first of {world_size} chunks of a "
            f"{context_len}-token context; lower prefill.attention.anchor_len / anchor_ratio or use fewer ranks"
        )
    owners = list(range(world_size))
    return _plan_approx(
        "apb", num_tokens, num_query_tokens, world_size, rank, anchor_len, chunks, owners, (chunks[rank],)
    )


def anchor_shard_len(anchor_len: int, world_size: int) -> int:
    """Rows of one anchor share (spava): ceil(A / W); the last shares may be shorter or empty."""
    return -(-anchor_len // world_size)


def anchor_shard(anchor_len: int, world_size: int, rank: int) -> tuple[int, int]:
    """The 1/W share of the anchor that this rank computes and owns (spava): [r*ceil(A/W), ...)."""
    shard = anchor_shard_len(anchor_len, world_size)
    return min(rank * shard, anchor_len), min((rank + 1) * shard, anchor_len)


def plan_spava(num_tokens: int, num_query_tokens: int, world_size: int, rank: int, anchor_len: int) -> SequencePlan:
    """Spava: 2W zigzag chunks of the context after the anchor, replicated query; the anchor is
    sharded: rank r computes (and owns) only its 1/W share of the anchor rows, and every layer
    all-gathers the shares' K/V, instead of every rank recomputing the whole anchor."""
    _check_common(num_tokens, num_query_tokens, world_size, rank)
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
    return _plan_approx(
        "spava", num_tokens, num_query_tokens, world_size, rank, anchor_len, chunks, owners, (share, *held),
        anchor_rows=share,
    )
