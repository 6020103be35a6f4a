"""Qwen2.5-VL 3-D M-RoPE position ids for one whole prompt (text, images, videos).

Role
----
Computes the ``(temporal, height, width)`` rotary position of every token of ONE
sequence (batch 1), as Qwen2.5-VL's ``get_rope_index`` does. Sequence-parallel prefill
needs these for the full prompt before splitting it across GPUs.

Inputs / outputs
----------------
``get_mrope_position_ids(input_ids [N], video_grid_thw [V, 3], image_grid_thw [I, 3],
second_per_grid_ts [V], ...)`` -> ``(position_ids [3, N] int64, rope_delta int)``.
``rope_delta = max(position_ids) + 1 - N``: during decoding, token ``N + k`` gets position
``N + k + rope_delta`` on all three axes.

Rules (Qwen's reference code as first merged into transformers; vLLM does the same)
-----------------------------------------------------------------------------------
* A vision item is a ``<|vision_start|>`` token followed by ``t*h*w / merge**2`` pad tokens
  (``<|image_pad|>`` or ``<|video_pad|>``). Grids are taken in order of appearance,
  separately for images and videos.
* Text tokens (``<|vision_start|>``/``<|vision_end|>`` included) get ``p, p+1, ...`` on
  all three axes. ``p`` is 0 at the start, and after a vision item it is
  ``max(item positions) + 1``.
* Token ``(i, j, k)`` of a vision item (temporal grid ``i``, merged row ``j``, merged
  column ``k``) starting at ``p`` gets ``(p + T_i, p + j, p + k)``. For videos
  ``T_i = int(float32(i) * float32(second_per_grid_t) * tokens_per_second)``: the product
  is truncated once, in float32, as the reference code does. For images ``T_i = 0``.

transformers 5.3 - 5.17 differ in two places (``is_transformers5_compat=True``
reproduces them; the tests check both modes against transformers):
``T_i = i * tokens_per_second * int(second_per_grid_t)``, which truncates the seconds
first (0.5 s becomes 0). And the text after an item starts at ``p + max(h, w) / merge``
rather than at ``max + 1``. So a long video's text positions overlap its temporal ids.
The two modes agree for images, and for videos with an integer ``second_per_grid_t`` and
``(t - 1) * interval < max(h, w) / merge``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

GridLike = torch.Tensor | Sequence[Sequence[int]] | None


def _as_token_ids(input_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``[N]`` or ``[1, N]`` token ids (tensor or list) -> CPU int64 ``[N]``."""
    ids = torch.as_tensor(input_ids).to(device="cpu", dtype=torch.int64)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1:
        raise ValueError(f"input_ids must be one sequence, [N] or [1, N], got shape {tuple(ids.shape)}")
    return ids


def _as_grids(grid_thw: GridLike) -> list[tuple[int, int, int]]:
    """``[K, 3]`` grids (tensor or nested list, or None) -> list of ``(t, h, w)`` ints."""
    if grid_thw is None:
        return []
    grids = torch.as_tensor(grid_thw, dtype=torch.int64).reshape(-1, 3)
    return [tuple(int(v) for v in row) for row in grids.tolist()]


def _find_vision_items(
    ids: torch.Tensor, image_token_id: int, video_token_id: int, vision_start_token_id: int
) -> list[tuple[int, int]]:
    """``(index of the first pad token, pad token id)`` of every vision item, in order."""
    if ids.numel() < 2:
        return []
    next_ids = ids[1:]
    is_start = (ids[:-1] == vision_start_token_id) & ((next_ids == image_token_id) | (next_ids == video_token_id))
    starts = torch.nonzero(is_start).flatten() + 1
    return [(int(start), int(ids[start])) for start in starts]


def _temporal_ids(
    num_grids_t: int, second_per_grid_t: float, tokens_per_second: int, is_transformers5_compat: bool
) -> torch.Tensor:
    """Relative temporal ids ``[num_grids_t]`` int64 of a video's temporal grids."""
    if is_transformers5_compat:
        interval = tokens_per_second * int(second_per_grid_t)
        return torch.arange(num_grids_t, dtype=torch.int64) * interval
    # float32 on purpose: the reference multiplies an index tensor by a float32 tensor.
    seconds = torch.tensor(second_per_grid_t, dtype=torch.float32)
    return (torch.arange(num_grids_t, dtype=torch.float32) * seconds * tokens_per_second).to(torch.int64)


def vision_position_ids(temporal_ids: torch.Tensor, grid_h: int, grid_w: int, start: int) -> torch.Tensor:
    """Positions ``[3, t*grid_h*grid_w]`` of one vision item, in its token order.

    Args:
        temporal_ids: ``[t]`` relative temporal id of each temporal grid.
        grid_h, grid_w: merged grid size (LLM tokens per column / row).
        start: position offset added on all three axes.
    """
    num_spatial = grid_h * grid_w
    num_grids_t = temporal_ids.numel()
    t_ids = temporal_ids.repeat_interleave(num_spatial)
    h_ids = torch.arange(grid_h, dtype=torch.int64).repeat_interleave(grid_w).repeat(num_grids_t)
    w_ids = torch.arange(grid_w, dtype=torch.int64).repeat(num_grids_t * grid_h)
    return torch.stack([t_ids, h_ids, w_ids]) + start


def _text_position_ids(num_tokens: int, start: int) -> torch.Tensor:
    """``[3, num_tokens]``: ``start, start+1, ...`` on all three axes."""
    return (torch.arange(num_tokens, dtype=torch.int64) + start).unsqueeze(0).expand(3, -1)


def _check_pad_run(ids: torch.Tensor, pad_start: int, num_pads: int, pad_id: int) -> None:
    """The item must hold exactly ``num_pads`` pad tokens, as its grid says."""
    run = ids[pad_start : pad_start + num_pads]
    is_short = run.numel() < num_pads or not bool((run == pad_id).all())
    is_long = pad_start + num_pads < ids.numel() and int(ids[pad_start + num_pads]) == pad_id
    if is_short or is_long:
        raise ValueError(
            f"vision item at token {pad_start} does not hold exactly {num_pads} pad tokens (t*h*w/merge^2 of its "
            "grid); build the prompt from the same grid_thw and merge size as the pixels"
        )


@dataclass(frozen=True)
class _VisionItem:
    """One vision item of the prompt: where its pads are and its merged grid."""

    pad_start: int
    grid_t: int
    llm_h: int
    llm_w: int
    second_per_grid_t: float | None  # None for images

    @property
    def num_pads(self) -> int:
        return self.grid_t * self.llm_h * self.llm_w


def _match_items(
    ids: torch.Tensor,
    grids: dict[int, list[tuple[int, int, int]]],
    seconds: list[float],
    *,
    spatial_merge_size: int,
    image_token_id: int,
    video_token_id: int,
    vision_start_token_id: int,
) -> list[_VisionItem]:
    """Pair every vision item of ``ids`` with its grid (in order, per kind) and validate the pads.

    ``grids`` maps the pad token id (image or video) to that kind's grids in prompt order.
    """
    items, num_used = [], {image_token_id: 0, video_token_id: 0}
    for pad_start, pad_id in _find_vision_items(ids, image_token_id, video_token_id, vision_start_token_id):
        kind = "video" if pad_id == video_token_id else "image"
        index = num_used[pad_id]
        if index >= len(grids[pad_id]):
            raise ValueError(f"prompt has more {kind} items than the {len(grids[pad_id])} {kind} grids given")
        grid_t, grid_h, grid_w = grids[pad_id][index]
        item = _VisionItem(
            pad_start, grid_t, grid_h // spatial_merge_size, grid_w // spatial_merge_size,
            seconds[index] if kind == "video" else None,
        )
        _check_pad_run(ids, pad_start, item.num_pads, pad_id)
        items.append(item)
        num_used[pad_id] += 1
    for pad_id, kind in ((image_token_id, "image"), (video_token_id, "video")):
        _check_all_used(ids, pad_id, items, grids[pad_id], num_used[pad_id], kind)
    return items


def _check_all_used(
    ids: torch.Tensor, pad_id: int, items: list[_VisionItem], grids: list, num_items: int, kind: str
) -> None:
    """Every grid must match an item, and every pad token must belong to an item."""
    if num_items != len(grids):
        raise ValueError(f"{len(grids)} {kind} grids given but the prompt has {num_items} {kind} items")
    is_video = kind == "video"
    num_expected = sum(item.num_pads for item in items if (item.second_per_grid_t is not None) == is_video)
    num_pads = int((ids == pad_id).sum())
    if num_pads != num_expected:
        raise ValueError(
            f"prompt has {num_pads} {kind} pad tokens but its {kind} items account for {num_expected}; every "
            "run of pad tokens must directly follow <|vision_start|>"
        )


def _assemble_positions(
    num_tokens: int, items: list[_VisionItem], tokens_per_second: int, is_transformers5_compat: bool
) -> torch.Tensor:
    """Positions ``[3, num_tokens]``: text runs and vision blocks, one loop step per vision item."""
    chunks, cursor, next_pos = [], 0, 0
    for item in items:
        chunks.append(_text_position_ids(item.pad_start - cursor, next_pos))
        next_pos += item.pad_start - cursor
        if item.second_per_grid_t is not None:
            temporal = _temporal_ids(item.grid_t, item.second_per_grid_t, tokens_per_second, is_transformers5_compat)
        else:
            # Images have no time axis: the reference uses 0, transformers 5 arange(t); equal for t = 1.
            temporal = torch.arange(item.grid_t, dtype=torch.int64) * int(is_transformers5_compat)
        block = vision_position_ids(temporal, item.llm_h, item.llm_w, next_pos)
        chunks.append(block)
        if is_transformers5_compat:
            next_pos += max(item.llm_h, item.llm_w)
        else:
            next_pos = int(block.max()) + 1
        cursor = item.pad_start + item.num_pads
    chunks.append(_text_position_ids(num_tokens - cursor, next_pos))
    return torch.cat(chunks, dim=1)


def _seconds_per_video(second_per_grid_ts, num_videos: int) -> list[float]:
    """``[V]`` seconds per temporal grid as floats; None means 1.0 for every video (as HF)."""
    if second_per_grid_ts is None:
        return [1.0] * num_videos
    seconds = [float(value) for value in torch.as_tensor(second_per_grid_ts).flatten()]
    if len(seconds) != num_videos:
        raise ValueError(f"second_per_grid_ts has {len(seconds)} values for {num_videos} videos; give one per video")
    if any(value < 0 for value in seconds):
        raise ValueError(f"second_per_grid_ts must be >= 0, got {seconds}")
    return seconds


def get_mrope_position_ids(
    input_ids: torch.Tensor | Sequence[int],
    video_grid_thw: GridLike = None,
    image_grid_thw: GridLike = None,
    second_per_grid_ts: torch.Tensor | Sequence[float] | None = None,
    *,
    spatial_merge_size: int,
    tokens_per_second: int,
    image_token_id: int,
    video_token_id: int,
    vision_start_token_id: int,
    is_transformers5_compat: bool = False,
) -> tuple[torch.Tensor, int]:
    """3-D M-RoPE positions of one full prompt (see the module docstring for the rules).

    Args:
        input_ids: ``[N]`` or ``[1, N]`` token ids of the whole prompt.
        video_grid_thw: ``[V, 3]`` patch grids of the videos, in prompt order (or None).
        image_grid_thw: ``[I, 3]`` patch grids of the images, in prompt order (or None).
        second_per_grid_ts: ``[V]`` seconds per temporal grid of each video; None means 1.0 each.
        spatial_merge_size: vision merge size (2).
        tokens_per_second: ``vision_config.tokens_per_second`` (2 for Qwen2.5-VL checkpoints).
        image_token_id, video_token_id, vision_start_token_id: ids from the tokenizer.
        is_transformers5_compat: reproduce transformers 5.3-5.17 instead of the reference rules.

    Returns:
        ``position_ids`` ``[3, N]`` int64 (temporal, height, width) and ``rope_delta``
        ``= max(position_ids) + 1 - N`` (0 for text only).
    """
    if image_token_id == video_token_id:
        raise ValueError("image_token_id and video_token_id must differ; look both up from the tokenizer")
    ids = _as_token_ids(input_ids)
    grids = {image_token_id: _as_grids(image_grid_thw), video_token_id: _as_grids(video_grid_thw)}
    seconds = _seconds_per_video(second_per_grid_ts, len(grids[video_token_id]))
    items = _match_items(
        ids, grids, seconds,
        spatial_merge_size=spatial_merge_size, image_token_id=image_token_id,
        video_token_id=video_token_id, vision_start_token_id=vision_start_token_id,
    )
    position_ids = _assemble_positions(ids.numel(), items, tokens_per_second, is_transformers5_compat)
    rope_delta = int(position_ids.max()) + 1 - ids.numel() if ids.numel() else 0
    return position_ids, rope_delta
