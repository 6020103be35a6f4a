"""Exact attention over K/V spread across ranks: local partial, all-gather (out, lse), LSE merge.

Used for the query rows of star / apb / spava (each rank attends them to the keys it owns) and for
every decoding step of every method (each rank attends the new token to its KV cache shard).
"""

from __future__ import annotations

import torch

from spava.attention.backend import AttentionBackend, attend_pieces
from spava.attention.merge import merge_stacked
from spava.comm.collectives import Pending, SPComm

Piece = tuple[torch.Tensor, torch.Tensor, bool]


class DistributedPartial:
    """One rank's partial of an exact distributed attention, gathered asynchronously.

    `launch` computes the local partial and starts the all-gathers; `finish` waits and merges.
    The merged result is identical on every rank.
    """

    def __init__(self, comm: SPComm):
        self.comm = comm
        self._gathered: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending = Pending()

    def launch(self, backend: AttentionBackend, q: torch.Tensor, pieces: list[Piece], scale: float | None) -> None:
        """q `[T, Hq, D]` attends to the union of this rank's key pieces (k, v, is_causal)."""
        self.share(*attend_pieces(backend, q, pieces, scale))

    def share(self, out: torch.Tensor, lse: torch.Tensor) -> None:
        """Start gathering this rank's partial (out `[T, Hq, D]`, lse `[T, Hq]`), however it was computed."""
        outs, pending_out = self.comm.all_gather_stacked(out, async_op=True)
        lses, pending_lse = self.comm.all_gather_stacked(lse.contiguous(), async_op=True)
        self._gathered = (outs, lses)
        self._pending = Pending(pending_out.works + pending_lse.works)

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (out `[T, Hq, D]` accumulator dtype, lse `[T, Hq]`), exact over all ranks' keys."""
        if self._gathered is None:
            raise RuntimeError("DistributedPartial.finish called before launch")
        self._pending.wait()
        outs, lses = self._gathered
        self._gathered = None
        return merge_stacked(outs, lses)


def owned_pieces(k: torch.Tensor, v: torch.Tensor, ranges: list[tuple[int, int]]) -> list[Piece]:
    """Key pieces for local ranges, for rows that are the last local tokens (query / new tokens).

    A range that ends at the last local key holds those rows' own keys, so it is masked causally
    (bottom-right: each row sees every earlier key of the range); every other range lies entirely
    before the rows and is attended in full.
    """
    num_keys = k.shape[0]
    return [(k[start:stop], v[start:stop], stop == num_keys) for start, stop in ranges]


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    comm: SPComm,
    backend: AttentionBackend,
    *,
    is_causal: bool,
    scale: float | None = None,
) -> torch.Tensor:
    """Exact attention of new rows over the distributed KV cache.

    Args:
        q: `[T, Hq, D]` new tokens (replicated on every rank).
        k_cache, v_cache: `[C, Hkv, D]` this rank's cache shard; on the rank that stores the new
            tokens they are its last T entries and `is_causal` must be True (bottom-right causal).
    Returns:
        `[T, Hq, D]` in q.dtype, identical on every rank.
    """
    partial = DistributedPartial(comm)
    partial.launch(backend, q, [(k_cache, v_cache, is_causal)], scale)
    out, _ = partial.finish()
    return out.to(q.dtype)
