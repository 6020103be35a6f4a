"""Exchange of passing blocks: every rank's selected K/V gathered into slot buffers, asynchronously.

The slot buffers `[num_slots, slot_len, Hkv, D]` (one for K, one for V) are laid out so that the
passing block of every chunk is one contiguous run of slots, hence a view and never a `torch.cat`.
A slot holds `counts[slot]` valid rows; when counts differ (only when a budget reaches the chunk
size) the valid rows are compacted with one index_select.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spava.comm.collectives import Pending, SPComm


@dataclass(frozen=True)
class PassingSlots:
    """Valid rows per slot; every slot has `slot_len = max(counts)` rows in the buffers."""

    counts: tuple[int, ...]

    @property
    def slot_len(self) -> int:
        return max(self.counts, default=0)

    @property
    def is_uniform(self) -> bool:
        return len(set(self.counts)) <= 1


class PassingExchange:
    """All-gathers of selections into slot buffers; a block of W slots is filled by one gather."""

    def __init__(self, comm: SPComm, slots: PassingSlots, like: torch.Tensor):
        self.comm, self.slots = comm, slots
        shape = (len(slots.counts), slots.slot_len, *like.shape[1:])
        self.buf_k = like.new_empty(shape)
        self.buf_v = like.new_empty(shape)
        self._pending: dict[int, Pending] = {}

    def send_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh `[slot_len, Hkv, D]` buffers for this rank's selection (unused rows stay zero)."""
        shape = self.buf_k.shape[1:]
        return self.buf_k.new_zeros(shape), self.buf_v.new_zeros(shape)

    def launch(self, first_slot: int, sel_k: torch.Tensor, sel_v: torch.Tensor) -> None:
        """Gather every rank's selection into slots [first_slot, first_slot + W), rank order."""
        block = slice(first_slot, first_slot + self.comm.world_size)
        pending_k = self.comm.all_gather_into(self.buf_k[block], sel_k, async_op=True)
        pending_v = self.comm.all_gather_into(self.buf_v[block], sel_v, async_op=True)
        self._pending[first_slot] = Pending(pending_k.works + pending_v.works)

    def wait(self, first_slot: int) -> None:
        self._pending.pop(first_slot).wait()

    def passing(self, slot_start: int, slot_stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V `[n, Hkv, D]` of the valid rows of slots [slot_start, slot_stop)."""
        tail = self.buf_k.shape[2:]
        if slot_stop <= slot_start:
            empty = self.buf_k.new_empty((0, *tail))
            return empty, empty
        k = self.buf_k[slot_start:slot_stop].reshape(-1, *tail)
        v = self.buf_v[slot_start:slot_stop].reshape(-1, *tail)
        if self.slots.is_uniform:
            return k, v
        slot_len = self.slots.slot_len
        rows = [torch.arange(s * slot_len, s * slot_len + self.slots.counts[s + slot_start])
                for s in range(slot_stop - slot_start)]
        index = torch.cat(rows).to(k.device)
        return k.index_select(0, index), v.index_select(0, index)
