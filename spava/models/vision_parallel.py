"""Frame-parallel vision encoding for the Qwen2-VL family: which rank encodes which temporal grids,
and where each visual embedding goes.

Qwen2.5-VL's ViT attends within one temporal grid only (window and full-attention blocks are both
cut per grid), so every temporal grid of every image/video is an independent encoding unit and
splitting by grid is exact. Encoder ranks take consecutive units balanced by patch count; each
prefill rank then receives exactly the embeddings of the vision tokens it holds (its anchor copy
and its chunks), by one uneven all-to-all, instead of an all-gather of everything.

All functions here are pure; `encode_and_route` is the only one that runs the encoder and talks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
class EmbeddingRoutes:
    """For this rank: rows of its encoder output to send to each rank, and where received rows go.

    send_rows[r]: indices into this rank's encoder output `[n_out, hidden]` destined for rank r.
    recv_positions[e]: local token positions (in this rank's plan order) of the rows from encoder e.
    """

    send_rows: tuple[torch.Tensor, ...]
    recv_positions: tuple[torch.Tensor, ...]


def plan_embedding_routes(units, assignment, vision_positions: torch.Tensor, plans: tuple[SequencePlan, ...],
                          rank: int) -> EmbeddingRoutes:
    """Route every visual embedding from the encoder that makes it to every rank holding its token.

    Args:
        vision_positions: `[n_vis]` global token position of each merged embedding row (images then
            videos, matching `units`' token order).
        plans: every rank's sequence plan (encoder ranks == prefill ranks, colocated).
    """
    num_ranks = len(plans)
    owner = torch.full((vision_positions.numel(),), -1, dtype=torch.long)
    for encoder, (start, stop) in enumerate(assignment):
        if stop > start:
            owner[units[start].token_start: units[stop - 1].token_stop] = encoder
    start, stop = assignment[rank]
    my_first_row = units[start].token_start if stop > start else 0
    send_rows = []
    for other in range(num_ranks):
        mine_and_held = (owner == rank) & (_local_index(plans[other], vision_positions) >= 0)
        send_rows.append(torch.nonzero(mine_and_held).flatten() - my_first_row)
    held_here = _local_index(plans[rank], vision_positions)
    recv_positions = [held_here[(owner == encoder) & (held_here >= 0)] for encoder in range(num_ranks)]
    return EmbeddingRoutes(tuple(send_rows), tuple(recv_positions))


def _local_index(plan: SequencePlan, positions: torch.Tensor) -> torch.Tensor:
    """Local index of each global position in `plan`, or -1 where the rank does not hold it."""
    local = torch.full((plan.num_tokens,), -1, dtype=torch.long)
    local[plan.local_token_ids()] = torch.arange(plan.num_local_tokens)
    return local[positions]


def encode_and_route(
    encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    pixel_values: torch.Tensor,
    units: tuple[VisionUnit, ...],
    assignment: tuple[tuple[int, int], ...],
    routes: EmbeddingRoutes,
    hidden: torch.Tensor,
    comm: SPComm,
) -> None:
    """Encode this rank's units and scatter every received embedding into `hidden` `[S, d]` in place.

    Args:
        encode: (pixel rows `[P, C*T*p*p]`, grid_thw `[G, 3]`) -> merged embeddings `[P/merge^2, d]`.
        pixel_values: all pixel rows (images then videos); only this rank's units are read.
    """
    start, stop = assignment[comm.rank]
    width = hidden.shape[1]
    if stop > start:
        mine = units[start:stop]
        grid = torch.tensor([[1, u.grid_h, u.grid_w] for u in mine], dtype=torch.long)
        rows = pixel_values[mine[0].patch_start: mine[-1].patch_stop].to(hidden.device)
        embeds = encode(rows, grid.to(hidden.device)).to(hidden.dtype)
    else:
        embeds = hidden.new_empty((0, width))
    send = torch.cat([embeds.index_select(0, rows_.to(hidden.device)) for rows_ in routes.send_rows])
    in_splits = [int(r.numel()) * width for r in routes.send_rows]
    out_splits = [int(p.numel()) * width for p in routes.recv_positions]
    recv = hidden.new_empty(sum(out_splits) // max(width, 1), width)
    comm.all_to_all(recv.view(-1), send.reshape(-1), out_splits, in_splits)
    positions = torch.cat(list(routes.recv_positions)).to(hidden.device)
    hidden.index_copy_(0, positions, recv)
