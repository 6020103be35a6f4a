"""Qwen3-VL 3-D M-RoPE position ids of one whole prompt (text, images, videos with timestamps).

Role
----
Computes the ``(temporal, height, width)`` rotary position of every token of ONE sequence, as
Qwen3-VL's ``get_rope_index`` does, so that sequence-parallel prefill can slice them per rank.
Pure function of the token ids and the grids; no model.

Rules
-----
* A vision block is a maximal run of pad tokens of one kind (``<|image_pad|>`` or
  ``<|video_pad|>``). A video contributes one block per temporal grid: its prompt writes
  ``<t seconds><|vision_start|>pads<|vision_end|>`` for each group of ``temporal_patch_size``
  frames, so time is carried by the text, not by the temporal rotary axis.
* Text tokens get ``p, p+1, ...`` on all three axes (``p`` = running position).
* Token ``(i, j, k)`` of a block starting at ``p`` (temporal index ``i`` of the block, merged
  row ``j``, merged column ``k``) gets ``(p + i, p + j, p + k)``; a video block has one temporal
  index, an image ``t`` (1 for every Qwen3-VL image).
* After a block, ``p`` advances by ``max(h, w) / merge``, the block's largest spatial extent.
* ``rope_delta = max(position) + 1 - N``: generated token ``N + s`` sits at ``N + s + rope_delta``.

The interleaving of the three axes over the rotary frequencies is the model's rotary module's
business (``Qwen3VLTextRotaryEmbedding``), not the positions'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spava.models.qwen2_5_vl.rope import vision_position_ids

GridLike = torch.Tensor | Sequence[Sequence[int]] | None
TEXT, IMAGE, VIDEO = 0, 1, 2


def _grids(grid_thw: GridLike) -> list[tuple[int, int, int]]:
    if grid_thw is None:
        return []
    return [tuple(int(v) for v in row) for row in torch.as_tensor(grid_thw, dtype=torch.int64).reshape(-1, 3).tolist()]


def _runs(token_types: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(type, start, stop)`` of every maximal run of equal token types, in order."""
    if token_types.numel() == 0:
        return []
    change = torch.nonzero(token_types[1:] != token_types[:-1]).flatten() + 1
    bounds = [0, *change.tolist(), token_types.numel()]
    return [(int(token_types[start]), start, stop) for start, stop in zip(bounds, bounds[1:])]


def _blocks(image_grids, video_grids) -> dict[int, list[tuple[int, int, int]]]:
    """Grids per block kind: images as given, videos split into one grid per temporal index."""
    return {IMAGE: list(image_grids), VIDEO: [(1, h, w) for t, h, w in video_grids for _ in range(t)]}


def get_rope_index(
    input_ids: torch.Tensor | Sequence[int],
    image_grid_thw: GridLike = None,
    video_grid_thw: GridLike = None,
    *,
    spatial_merge_size: int,
    image_token_id: int,
    video_token_id: int,
) -> tuple[torch.Tensor, int]:
    """Positions ``[3, N]`` int64 and ``rope_delta`` of one prompt (see the module docstring).

    Args:
        input_ids: ``[N]`` token ids of the whole prompt.
        image_grid_thw: ``[I, 3]`` patch grids of the images in prompt order (or None).
        video_grid_thw: ``[V, 3]`` patch grids of the videos in prompt order (or None).
        spatial_merge_size: vision merge size (2).
        image_token_id, video_token_id: the pad tokens' ids.
    Raises:
        ValueError: when the pad runs do not match the grids (count or length).
    """
    ids = torch.as_tensor(input_ids, dtype=torch.int64).reshape(-1)
    types = torch.zeros_like(ids)
    types[ids == image_token_id] = IMAGE
    types[ids == video_token_id] = VIDEO
    grids = _blocks(_grids(image_grid_thw), _grids(video_grid_thw))
    used = {IMAGE: 0, VIDEO: 0}
    chunks, position = [], 0
    for kind, start, stop in _runs(types):
        if kind == TEXT:
            chunks.append((torch.arange(stop - start, dtype=torch.int64) + position).expand(3, -1))
            position += stop - start
            continue
        name = "image" if kind == IMAGE else "video frame-group"
        if used[kind] >= len(grids[kind]):
            raise ValueError(f"the prompt has more {name} blocks than the {len(grids[kind])} its grids give")
        grid_t, grid_h, grid_w = grids[kind][used[kind]]
        used[kind] += 1
        llm_h, llm_w = grid_h // spatial_merge_size, grid_w // spatial_merge_size
        if stop - start != grid_t * llm_h * llm_w:
            raise ValueError(f"{name} block at token {start} has {stop - start} pad tokens but its grid "
                             f"{(grid_t, grid_h, grid_w)} needs {grid_t * llm_h * llm_w}; build the prompt "
                             "from the same grids and merge size as the pixels")
        chunks.append(vision_position_ids(torch.arange(grid_t, dtype=torch.int64), llm_h, llm_w, position))
        position += max(llm_h, llm_w)
    for kind, name in ((IMAGE, "image"), (VIDEO, "video frame-group")):
        if used[kind] != len(grids[kind]):
            raise ValueError(f"{len(grids[kind])} {name} grids given but the prompt has {used[kind]} {name} blocks")
    positions = torch.cat(chunks, dim=1) if chunks else torch.zeros(3, 0, dtype=torch.int64)
    rope_delta = int(positions.max()) + 1 - ids.numel() if ids.numel() else 0
    return positions, rope_delta
