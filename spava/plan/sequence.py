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

Each method's own file holds its plan function (`plan_<method>`, e.g. `plan_spava` in
`spava/attention/spava.py`) and says its layout in words (`AttentionMethod.layout`); this module
holds the plan object and the helpers several methods' plans share. Chunks are balanced: lengths
differ by at most one token (the reference put the remainder on the last chunk; balancing keeps
every rank's load within one token).
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


def check_request(num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> None:
    """ValueError unless (num_tokens, num_query_tokens, world_size, rank) describe a request every plan can take."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    if num_tokens < 1:
        raise ValueError(f"the prompt is empty (num_tokens={num_tokens})")
    if not 0 <= num_query_tokens <= num_tokens:
        raise ValueError(f"num_query_tokens={num_query_tokens} must lie in [0, {num_tokens}]")


def assemble_exact_plan(method: str, num_tokens: int, num_query_tokens: int, world_size: int, rank: int,
                        chunks: tuple[tuple[int, int], ...], owners, decode_rank: int) -> SequencePlan:
    """The plan of an exact method: rank `rank` holds (and owns) the chunks whose owner it is, in order.

    `chunks` tile [0, N) in global order; `owners[i]` is the rank of chunk i; `decode_rank` holds the
    last token."""
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


def plan_contiguous(method: str, num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
    """W contiguous chunks of the whole prompt (ring, ulysses); the last token lives on rank W-1."""
    check_request(num_tokens, num_query_tokens, world_size, rank)
    if num_tokens < world_size:
        raise ValueError(
            f"{method}: {num_tokens} tokens cannot be split over {world_size} ranks; use fewer ranks"
        )
    chunks = balanced_bounds(0, num_tokens, world_size)
    owners = list(range(world_size))
    return assemble_exact_plan(method, num_tokens, num_query_tokens, world_size, rank, chunks, owners, world_size - 1)


def zigzag_owner(chunk_id: int, world_size: int) -> int:
    """Rank holding zigzag chunk `chunk_id` of 2W: rank r holds chunks r and 2W-1-r."""
    return chunk_id if chunk_id < world_size else 2 * world_size - 1 - chunk_id


def assemble_approx_plan(method: str, num_tokens: int, num_query_tokens: int, world_size: int, rank: int,
                         anchor_len: int, chunks: tuple[tuple[int, int], ...], owners, owned,
                         anchor_rows: tuple[int, int] | None = None) -> SequencePlan:
    """The plan of an approximate method: [anchor rows?] + held context chunks + replicated query.

    `chunks` tile the context part after whatever the layout leaves out, `owners[i]` is the rank of
    chunk i, `owned` the context ranges this rank owns (rank 0 also owns the query block: it decodes).
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
