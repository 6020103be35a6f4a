"""Frame-parallel vision encoding for the Qwen2-VL family: which rank encodes which temporal grids,
and where each visual embedding goes.

Qwen2.5-VL's ViT attends within one temporal grid only (window and full-attention blocks are both
cut per grid), so every temporal grid of every image/video is an independent encoding unit and
splitting by grid is exact. Encoder ranks take consecutive units balanced by patch count; each
prefill rank then receives exactly the embeddings of the vision tokens it holds (its anchor copy
and its chunks), by one uneven all-to-all, instead of an all-gather of everything.

The planning functions are pure; `encode_units` / `encode_units_batch` run the encoder (one request,
or the grids of several requests in one call on a disaggregated encoder rank); `encode_and_route` is
the only one that talks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from spava.comm.collectives import SPComm
from spava.plan.sequence import SequencePlan


@dataclass(frozen=True)
class VisionUnit:
    """One temporal grid of one vision item, encoded on its own.

    patch_start/stop: rows of the (images then videos) concatenated pixel rows `[P, C*T*p*p]`;
    token_start/stop: rows of the merged embedding sequence (same item order).
    """

    item: int
    grid_h: int
    grid_w: int
    patch_start: int
    patch_stop: int
    token_start: int
    token_stop: int


def plan_vision_units(grid_thw: list[tuple[int, int, int]], merge_size: int) -> tuple[VisionUnit, ...]:
    """Split every item of `grid_thw` (t, h, w in patches) into its temporal grids, in order."""
    units, patch, token = [], 0, 0
    merge_area = merge_size * merge_size
    for item, (grid_t, grid_h, grid_w) in enumerate(grid_thw):
        num_patches = grid_h * grid_w
        for _ in range(grid_t):
            units.append(VisionUnit(item, grid_h, grid_w, patch, patch + num_patches,
                                    token, token + num_patches // merge_area))
            patch += num_patches
            token += num_patches // merge_area
    return tuple(units)


def assign_units(units: tuple[VisionUnit, ...], num_encoders: int) -> tuple[tuple[int, int], ...]:
    """Consecutive unit ranges [start, stop) per encoder, balanced by patch count.

    With fewer units than encoders some encoders get an empty range (they encode nothing).
    """
    total = sum(u.patch_stop - u.patch_start for u in units)
    bounds, start, seen = [], 0, 0
    for encoder in range(num_encoders):
        target = total * (encoder + 1) / num_encoders
        stop = start
        while stop < len(units) and (seen + (units[stop].patch_stop - units[stop].patch_start) / 2) <= target:
            seen += units[stop].patch_stop - units[stop].patch_start
            stop += 1
        if encoder == num_encoders - 1:
            stop = len(units)
        bounds.append((start, stop))
        start = stop
    return tuple(bounds)


@dataclass(frozen=True)
class RouteTable:
    """Where every visual embedding goes, for E encoders and W receiving (prefill) ranks.

    send_rows[e][r]: indices into encoder e's output `[n_e, hidden]` destined for receiver r.
    recv_positions[r][e]: local token positions (in receiver r's plan order) of those rows.
    """

    send_rows: tuple[tuple[torch.Tensor, ...], ...]
    recv_positions: tuple[tuple[torch.Tensor, ...], ...]


def plan_route_table(units, assignment, vision_positions: torch.Tensor, plans: tuple[SequencePlan, ...]) -> RouteTable:
    """Route each embedding from the encoder that makes it to every receiver holding its token.

    Args:
        units, assignment: from `plan_vision_units` / `assign_units` (E = len(assignment)).
        vision_positions: `[n_vis]` global token position of each merged embedding row (images then
            videos, matching `units`' token order).
        plans: every receiver's sequence plan (W = len(plans)).
    """
    owner = torch.full((vision_positions.numel(),), -1, dtype=torch.long)
    first_row = []
    for encoder, (start, stop) in enumerate(assignment):
        if stop > start:
            owner[units[start].token_start: units[stop - 1].token_stop] = encoder
        first_row.append(units[start].token_start if stop > start else 0)
    held = [_local_index(plan, vision_positions) for plan in plans]
    send_rows = tuple(
        tuple(torch.nonzero((owner == e) & (held[r] >= 0)).flatten() - first_row[e] for r in range(len(plans)))
        for e in range(len(assignment))
    )
    recv_positions = tuple(
        tuple(held[r][(owner == e) & (held[r] >= 0)] for e in range(len(assignment))) for r in range(len(plans))
    )
    return RouteTable(send_rows, recv_positions)


def encode_units(encode, pixel_values: torch.Tensor, units, assignment, rank: int, device, dtype,
                 progress=None) -> torch.Tensor | None:
    """Run the encoder on the units assigned to `rank`: -> `[n_rows, hidden]`, or None if it has none.

    With a `progress(done, total)` callback and many units, the units are encoded in 8 calls (exact:
    temporal grids never attend to each other) so a bar can move on long videos.
    """
    start, stop = assignment[rank]
    if stop <= start:
        return None
    mine = units[start:stop]
    num_calls = 8 if progress is not None and len(mine) >= 32 else 1
    step = -(-len(mine) // num_calls)
    pieces = []
    for first in range(0, len(mine), step):
        batch = mine[first: first + step]
        grid = torch.tensor([[1, u.grid_h, u.grid_w] for u in batch], dtype=torch.long, device=device)
        rows = pixel_values[batch[0].patch_start: batch[-1].patch_stop].to(device)
        pieces.append(encode(rows, grid).to(dtype))
        if progress is not None:
            progress(min(first + step, len(mine)), len(mine))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def encode_units_batch(encode, pixel_values: list[torch.Tensor], units: list, assignments: list, rank: int,
                       device, dtype, progress=None) -> list[torch.Tensor | None]:
    """Several requests' units assigned to `rank`, encoded together: -> per request `[n_rows_i, hidden]` or None.

    Args:
        encode: (pixel rows `[P, C*T*p*p]`, grid_thw `[G, 3]`) -> merged embeddings `[P/merge^2, d]`.
        pixel_values: per request, its pixel rows `[P_i, C*T*p*p]` (images then videos).
        units, assignments: per request, its `plan_vision_units` / `assign_units` (same E for all).
        progress: optional `progress(done, total)` over the batch's units, as in `encode_units`.

    Returns, per request, what `encode_units` returns for it alone: the embeddings of its units on
    `rank` (`n_rows_i` = their merged tokens), None where `rank` has none of its units.

    The rank's share of each request (consecutive units, so consecutive pixel rows) is cut out and the
    shares are concatenated in request order into `[sum_i p_i, C*T*p*p]` rows with one grid row per unit:
    `encode_units` encodes that as one request (one tower call, or 8 with a progress callback and >= 32
    units) and the output rows are split back. Exact: temporal grids never attend to each other. A
    batch of one makes the same tower call as `encode_units` (no copy of its pixels).
    """
    pieces, merged, counts = [], [], []
    for pixels, request_units, assignment in zip(pixel_values, units, assignments, strict=True):
        start, stop = assignment[rank]
        mine = request_units[start:stop]
        counts.append(mine[-1].token_stop - mine[0].token_start if mine else 0)
        if mine:
            pieces.append(pixels[mine[0].patch_start: mine[-1].patch_stop])
            patch = merged[-1].patch_stop if merged else 0
            token = merged[-1].token_stop if merged else 0
            merged += _rebase(mine, patch, token)
    if not merged:
        return [None] * len(counts)
    # move each share to the device before concatenating: a host-side copy of pixel rows is the slow one
    rows = pieces[0] if len(pieces) == 1 else torch.cat([piece.to(device) for piece in pieces])
    embeds = encode_units(encode, rows, tuple(merged), ((0, len(merged)),), 0, device, dtype, progress)
    shares = iter(embeds.split([count for count in counts if count]))
    return [next(shares) if count else None for count in counts]


def _rebase(units, patch: int, token: int) -> list[VisionUnit]:
    """Consecutive `units` moved to start at pixel row `patch` and embedding row `token`."""
    patch_shift, token_shift = patch - units[0].patch_start, token - units[0].token_start
    return [dataclasses.replace(u, patch_start=u.patch_start + patch_shift, patch_stop=u.patch_stop + patch_shift,
                                token_start=u.token_start + token_shift, token_stop=u.token_stop + token_shift)
            for u in units]


def _local_index(plan: SequencePlan, positions: torch.Tensor) -> torch.Tensor:
    """Local index of each global position in `plan`, or -1 where the rank does not hold it."""
    local = torch.full((plan.num_tokens,), -1, dtype=torch.long)
    local[plan.local_token_ids()] = torch.arange(plan.num_local_tokens)
    return local[positions]


def encode_and_route(encode, pixel_values, units, assignment, table: RouteTable, hidden: torch.Tensor,
                     comm: SPComm, progress=None) -> None:
    """Colocated: every rank encodes its units, one all-to-all delivers rows to the ranks holding them.

    Args:
        encode: (pixel rows `[P, C*T*p*p]`, grid_thw `[G, 3]`) -> merged embeddings `[P/merge^2, d]`.
        hidden: `[S, d]` this rank's input embeddings, filled in place at its vision positions.
    """
    rank, width = comm.rank, hidden.shape[1]
    embeds = encode_units(encode, pixel_values, units, assignment, rank, hidden.device, hidden.dtype, progress)
    if embeds is None:
        embeds = hidden.new_empty((0, width))
    send_rows = table.send_rows[rank]
    recv_positions = table.recv_positions[rank]
    send = torch.cat([embeds.index_select(0, rows.to(hidden.device)) for rows in send_rows])
    in_splits = [int(rows.numel()) * width for rows in send_rows]
    out_splits = [int(pos.numel()) * width for pos in recv_positions]
    recv = hidden.new_empty(sum(out_splits) // width, width)
    comm.all_to_all(recv.view(-1), send.reshape(-1), out_splits, in_splits)
    hidden.index_copy_(0, torch.cat(list(recv_positions)).to(hidden.device), recv)
