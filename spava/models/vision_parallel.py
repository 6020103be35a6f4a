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

import contextlib
from dataclasses import dataclass

import torch

from spava.comm.collectives import SPComm
from spava.plan.sequence import SequencePlan


@dataclass(frozen=True)
class VisionUnit:
    """One temporal grid of one vision item, encoded on its own.

    index: position among all units of the request (images then videos, temporal order);
    patch_start/stop: rows of the (images then videos) concatenated pixel rows `[P, C*T*p*p]`;
    token_start/stop: rows of the merged embedding sequence (same item order).
    """

    index: int
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
            units.append(VisionUnit(len(units), item, grid_h, grid_w, patch, patch + num_patches,
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


MAX_UNITS_PER_READ = 8  # units preprocessed per call: bounds the float32 intermediates on the device


def _read_rows(source, wave: list[VisionUnit], device, dtype) -> torch.Tensor:
    """Pixel rows of `wave` (any units, in order), read in runs of consecutive units of one item."""
    pieces, run = [], []
    for unit in wave:
        if run and (unit.item != run[-1].item or unit.index != run[-1].index + 1 or len(run) == MAX_UNITS_PER_READ):
            pieces.append(source.rows(run, device, dtype))
            run = []
        run.append(unit)
    pieces.append(source.rows(run, device, dtype))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _num_calls(num_units: int, progress) -> int:
    """Tower calls for complete inputs: one, or 8 with a progress bar on long videos."""
    return 8 if progress is not None and num_units >= 32 else 1


def encode_units(encode, source, units, assignment, rank: int, device, dtype, progress=None,
                 timer=None) -> torch.Tensor | None:
    """Run the encoder on the units assigned to `rank` as their inputs become ready.

    Args:
        encode: (pixel rows `[P, C*T*p*p]`, grid_thw `[G, 3]`) -> merged features `[P/merge^2, d]`.
        source: a `VisualSource` (pixel rows made already, or streamed frames preprocessed here).
        timer: optional `StageTimer` receiving `encode_s`.
    Returns:
        `[n_rows, d]` features of this rank's units in unit order, or None if it has none.

    Units are independent (a temporal grid never attends to another), so whatever is ready is
    encoded together: complete inputs take one tower call (8 with a `progress(done, total)` callback
    and >= 32 units, so a bar can move); streamed frames take one call per wave of decoded units.
    """
    start, stop = assignment[rank]
    if stop <= start:
        return None
    mine = units[start:stop]
    base, num_rows = mine[0].token_start, mine[-1].token_stop - mine[0].token_start
    max_wave = -(-len(mine) // _num_calls(len(mine), progress))
    out, pending, num_done = None, [u.index for u in mine], 0
    while pending:
        ready = source.wait_units(pending)
        for first in range(0, len(ready), max_wave):
            wave = [units[index] for index in ready[first: first + max_wave]]
            rows = _read_rows(source, wave, device, dtype)
            grid = torch.tensor([[1, u.grid_h, u.grid_w] for u in wave], dtype=torch.long, device=device)
            with timer.span("encode_s") if timer is not None else contextlib.nullcontext():
                features = encode(rows, grid).to(dtype)
            if out is None:
                out = features.new_empty((num_rows, features.shape[1]))
            _scatter_rows(out, features, wave, base)
            num_done += len(wave)
            if progress is not None:
                progress(num_done, len(mine))
        done = set(ready)
        pending = [index for index in pending if index not in done]
    return out


def _scatter_rows(out: torch.Tensor, features: torch.Tensor, wave: list[VisionUnit], base: int) -> None:
    """Place the features of `wave` (concatenated in wave order) at their units' rows of `out`."""
    if all(b.index == a.index + 1 for a, b in zip(wave, wave[1:])):
        out[wave[0].token_start - base: wave[-1].token_stop - base] = features
        return
    index = torch.cat([torch.arange(u.token_start - base, u.token_stop - base) for u in wave]).to(out.device)
    out.index_copy_(0, index, features)


def encode_units_batch(encode, sources: list, units: list, assignments: list, rank: int,
                       device, dtype, progress=None, timer=None) -> list[torch.Tensor | None]:
    """Several requests' units assigned to `rank`, encoded together: -> per request `[n_rows_i, d]` or None.

    Args:
        encode: (pixel rows `[P, C*T*p*p]`, grid_thw `[G, 3]`) -> merged features `[P/merge^2, d]`.
        sources: per request, its `VisualSource`.
        units, assignments: per request, its `plan_vision_units` / `assign_units` (same E for all).
        progress: optional `progress(done, total)` over the batch's units, as in `encode_units`.

    Returns, per request, what `encode_units` returns for it alone: the features of its units on
    `rank` (`n_rows_i` = their merged tokens), None where `rank` has none of its units.

    Every request's share is read once its inputs are complete (batches serve streams of short
    videos), the shares' rows are concatenated in request order with one grid row per unit, and the
    tower runs once (8 times with a progress callback and >= 32 units); the output is split back.
    Exact: temporal grids never attend to each other.
    """
    rows, grids, counts = [], [], []
    for source, request_units, assignment in zip(sources, units, assignments, strict=True):
        start, stop = assignment[rank]
        mine = list(request_units[start:stop])
        counts.append(mine[-1].token_stop - mine[0].token_start if mine else 0)
        if mine:
            source.wait_complete()
            rows.append(_read_rows(source, mine, device, dtype))
            grids += [[1, u.grid_h, u.grid_w] for u in mine]
    if not rows:
        return [None] * len(counts)
    all_rows = rows[0] if len(rows) == 1 else torch.cat(rows)
    grid = torch.tensor(grids, dtype=torch.long, device=device)
    num_calls = _num_calls(len(grids), progress)
    step = -(-len(grids) // num_calls)
    pieces, patch = [], 0
    for first in range(0, len(grids), step):
        sizes = [h * w for _, h, w in grids[first: first + step]]
        with timer.span("encode_s") if timer is not None else contextlib.nullcontext():
            pieces.append(encode(all_rows[patch: patch + sum(sizes)], grid[first: first + step]).to(dtype))
        patch += sum(sizes)
        if progress is not None:
            progress(min(first + step, len(grids)), len(grids))
    features = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
    shares = iter(features.split([count for count in counts if count]))
    return [next(shares) if count else None for count in counts]


def _local_index(plan: SequencePlan, positions: torch.Tensor) -> torch.Tensor:
    """Local index of each global position in `plan`, or -1 where the rank does not hold it."""
    local = torch.full((plan.num_tokens,), -1, dtype=torch.long)
    local[plan.local_token_ids()] = torch.arange(plan.num_local_tokens)
    return local[positions]


def encode_and_route(encode, source, units, assignment, table: RouteTable, hidden: torch.Tensor,
                     comm: SPComm, width: int, progress=None, timer=None) -> torch.Tensor:
    """Colocated: every rank encodes its units, one all-to-all delivers rows to the ranks holding them.

    Args:
        encode: (pixel rows `[P, C*T*p*p]`, grid_thw `[G, 3]`) -> merged features `[P/merge^2, d']`
            (d' = hidden, or more for towers that also return per-token features for later layers).
        source: the request's `VisualSource`.
        hidden: `[S, hidden]` this rank's input embeddings (for device and dtype).
        width: d', the encoder's feature width.
    Returns:
        `[n_local, d']` features of the vision tokens this rank holds, in the order of its
        `table.recv_positions` (concatenated over encoders); `local_vision_rows(table, rank)` gives
        their local positions.

    Before the all-to-all every rank waits for the request's inputs to be complete (or failed), so
    that all ranks either enter the collective or raise `FramesFailed` together.
    """
    rank = comm.rank
    embeds = encode_units(encode, source, units, assignment, rank, hidden.device, hidden.dtype, progress, timer)
    source.wait_complete()
    if embeds is None:
        embeds = hidden.new_empty((0, width))
    send_rows = table.send_rows[rank]
    recv_positions = table.recv_positions[rank]
    send = torch.cat([embeds.index_select(0, rows.to(hidden.device)) for rows in send_rows])
    in_splits = [int(rows.numel()) * width for rows in send_rows]
    out_splits = [int(pos.numel()) * width for pos in recv_positions]
    recv = hidden.new_empty(sum(out_splits) // width, width)
    comm.all_to_all(recv.view(-1), send.reshape(-1), out_splits, in_splits)
    return recv


def route_for(method, inputs, placement, merge_size: int):
    """Units, their assignment to the E encoders, and the route table to the W prefill ranks (pure).

    Disaggregated encoders and prefill ranks each compute it from the same layout, so both sides
    agree on every point-to-point transfer without exchanging the table.
    """
    units = plan_vision_units(inputs.grid_thw, merge_size)
    assignment = assign_units(units, placement.num_encoders)
    plans = tuple(method.plan(inputs.num_tokens, inputs.num_query_tokens, placement.num_prefill, r)
                  for r in range(placement.num_prefill))
    return units, assignment, plan_route_table(units, assignment, inputs.vision_positions, plans)


def transfer_tag(seq: int) -> int:
    """P2P tag of one request's embedding transfers (gloo matches on it; NCCL orders per peer pair instead)."""
    return seq % (1 << 20)


def local_vision_rows(table: RouteTable, rank: int) -> torch.Tensor:
    """Local token positions (rank `rank`'s plan order) of the rows it receives, in receive order."""
    return torch.cat(list(table.recv_positions[rank]))
