"""Exchange of passing blocks: every rank's selected K/V gathered into slot buffers, asynchronously.

The buffers (one for K, one for V) hold `num_slots` slots of `slot_len` rows `[Hkv, D]`, and
optionally a *gap* of `gap_len` rows just before slot `gap_before`, which the method fills itself
(spava puts the anchor there). Slots and gap are laid out so that every key set a chunk attends to
besides its own keys is one contiguous run of rows: a view, never a `torch.cat`, and one attention
call. A slot holds `counts[slot]` valid rows; when counts differ (only when a budget reaches the
chunk size) the valid rows are compacted with one index_select.
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

    def __init__(self, comm: SPComm, slots: PassingSlots, like: torch.Tensor, *, gap_before: int = 0,
                 gap_len: int = 0):
        """like: `[S, Hkv, D]` keys (dtype, device, row shape); gap: `gap_len` rows before slot `gap_before`."""
        self.comm, self.slots = comm, slots
        self.gap_before, self.gap_len = gap_before, gap_len
        num_rows = len(slots.counts) * slots.slot_len + gap_len
        self.buf_k = like.new_empty((num_rows, *like.shape[1:]))
        self.buf_v = like.new_empty((num_rows, *like.shape[1:]))
        self._pending: dict[int, Pending] = {}
        self._gap_staging: tuple[torch.Tensor, torch.Tensor] | None = None

    def slot_row(self, slot: int) -> int:
        """First buffer row of `slot` (slots at or after the gap are shifted by it)."""
        return slot * self.slots.slot_len + (self.gap_len if slot >= self.gap_before else 0)

    def gap(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Views `[gap_len, Hkv, D]` of the gap rows of K and V."""
        start = self.slot_row(self.gap_before) - self.gap_len
        return self.buf_k[start: start + self.gap_len], self.buf_v[start: start + self.gap_len]

    def launch_gap_gather(self, local_k: torch.Tensor, local_v: torch.Tensor, shard: int) -> None:
        """All-gather every rank's `shard`-row piece (rank r: rows [r*shard, ...) of the gap, the last
        pieces possibly shorter or empty) into the gap; `wait_gap()` before reading it.

        local_k, local_v: `[n <= shard, Hkv, D]` this rank's piece. When W * shard exceeds the gap,
        the pieces land in a staging buffer and the first `gap_len` rows are copied over on wait.
        """
        world_size = self.comm.world_size
        row_shape = self.buf_k.shape[1:]
        if world_size * shard == self.gap_len:
            out_k, out_v = (view.view(world_size, shard, *row_shape) for view in self.gap())
        else:
            out_k, out_v = (self.buf_k.new_empty((world_size, shard, *row_shape)) for _ in range(2))
            self._gap_staging = (out_k, out_v)
        if local_k.shape[0] < shard:  # pad: all-gather needs equal pieces
            local_k = torch.cat([local_k, local_k.new_zeros((shard - local_k.shape[0], *row_shape))])
            local_v = torch.cat([local_v, local_v.new_zeros((shard - local_v.shape[0], *row_shape))])
        pending_k = self.comm.all_gather_into(out_k, local_k, async_op=True)
        pending_v = self.comm.all_gather_into(out_v, local_v, async_op=True)
        self._pending[-1] = Pending(pending_k.works + pending_v.works)

    def wait_gap(self) -> None:
        self.wait(-1)
        if self._gap_staging is not None:
            gap_k, gap_v = self.gap()
            gap_k.copy_(self._gap_staging[0].flatten(0, 1)[: self.gap_len])
            gap_v.copy_(self._gap_staging[1].flatten(0, 1)[: self.gap_len])
            self._gap_staging = None

    def send_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh `[slot_len, Hkv, D]` buffers for this rank's selection (unused rows stay zero)."""
        shape = (self.slots.slot_len, *self.buf_k.shape[1:])
        return self.buf_k.new_zeros(shape), self.buf_v.new_zeros(shape)

    def launch(self, first_slot: int, sel_k: torch.Tensor, sel_v: torch.Tensor) -> None:
        """Gather every rank's selection into slots [first_slot, first_slot + W), rank order."""
        world_size, slot_len = self.comm.world_size, self.slots.slot_len
        start = self.slot_row(first_slot)
        block_shape = (world_size, slot_len, *self.buf_k.shape[1:])
        block_k = self.buf_k[start: start + world_size * slot_len].view(block_shape)
        block_v = self.buf_v[start: start + world_size * slot_len].view(block_shape)
        pending_k = self.comm.all_gather_into(block_k, sel_k, async_op=True)
        pending_v = self.comm.all_gather_into(block_v, sel_v, async_op=True)
        self._pending[first_slot] = Pending(pending_k.works + pending_v.works)

    def wait(self, first_slot: int) -> None:
        """Wait for the gather that fills slots from `first_slot` (no-op when none was launched)."""
        pending = self._pending.pop(first_slot, None)
        if pending is not None:
            pending.wait()

    def passing(self, slot_start: int, slot_stop: int, with_gap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V `[n, Hkv, D]`: the valid rows of slots [slot_start, slot_stop), plus the gap rows when
        they lie inside that run or `with_gap` asks for them right before `slot_start == gap_before`."""
        lead = self.gap_len if with_gap and slot_start == self.gap_before else 0
        start = self.slot_row(slot_start) - lead
        stop = self.slot_row(slot_stop) - (self.gap_len if slot_stop == self.gap_before else 0)
        stop = max(stop, start + lead)
        k, v = self.buf_k[start:stop], self.buf_v[start:stop]
        if self.slots.is_uniform or self.slots.slot_len == 0:
            return k, v
        index = self._valid_rows(slot_start, slot_stop, start, stop).to(k.device)
        return k.index_select(0, index), v.index_select(0, index)

    def _valid_rows(self, slot_start: int, slot_stop: int, start: int, stop: int) -> torch.Tensor:
        """Buffer-row indices (relative to `start`) of the valid slot rows and gap rows in [start, stop)."""
        keep = torch.zeros(stop - start, dtype=torch.bool)
        for slot in range(slot_start, slot_stop):
            row = self.slot_row(slot) - start
            keep[row: row + self.slots.counts[slot]] = True
        gap_start = self.slot_row(self.gap_before) - self.gap_len - start
        keep[max(gap_start, 0): max(gap_start + self.gap_len, 0)] = True
        return keep.nonzero().flatten()
