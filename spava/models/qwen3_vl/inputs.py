"""Assemble Qwen3-VL `PromptInputs` from token ids (and, for tests and benchmarks, pixel rows).

Checks that the pad tokens match the grids, computes the full-prompt M-RoPE positions once
(`spava.models.qwen3_vl.rope`), and orders the visual items as the model consumes their features:
images first, then videos. Within a video the pad tokens are in temporal-group order, which is the
order of the vision units (`spava.models.vision_parallel.plan_vision_units`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spava.models.inputs import PromptInputs
from spava.models.qwen3_vl.rope import get_rope_index


@dataclass(frozen=True)
class Qwen3VLTokenIds:
    """Token ids and vision sizes the prompt layout needs from the model config."""

    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int
    spatial_merge_size: int
    temporal_patch_size: int


def _grids(grid_thw) -> list[tuple[int, int, int]]:
    if grid_thw is None:
        return []
    return [tuple(int(x) for x in row) for row in torch.as_tensor(grid_thw).reshape(-1, 3).tolist()]


def _pad_positions(input_ids: torch.Tensor, token_id: int, grids, merge_size: int, kind: str) -> torch.Tensor:
    positions = torch.nonzero(input_ids == token_id).flatten()
    expected = sum(t * h * w for t, h, w in grids) // (merge_size * merge_size)
    if positions.numel() != expected:
        raise ValueError(f"the prompt has {positions.numel()} {kind} pad tokens but the {kind} grids need {expected}; "
                         f"build the prompt with build_chat_prompt from the same {kind} grid")
    return positions


def build_prompt_inputs(input_ids: torch.Tensor, num_query_tokens: int, token_ids: Qwen3VLTokenIds, *,
                        image_grid_thw=None, video_grid_thw=None, pixel_values: torch.Tensor | None = None,
                        pixel_values_videos: torch.Tensor | None = None) -> PromptInputs:
    """Everything a rank needs to run one Qwen3-VL request (CPU tensors, identical on all ranks).

    Args:
        input_ids: `[N]` full prompt (`spava.models.qwen3_vl.prompt.build_chat_prompt`).
        num_query_tokens: length of the trailing query block.
        image_grid_thw, video_grid_thw: `[K, 3]` grids of the prompt's images / videos.
        pixel_values, pixel_values_videos: `[P, patch_dim]` rows made already (tests, benchmarks);
            None when the ranks preprocess streamed frames themselves.
    """
    input_ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    image_grids, video_grids = _grids(image_grid_thw), _grids(video_grid_thw)
    merge = token_ids.spatial_merge_size
    image_positions = _pad_positions(input_ids, token_ids.image_token_id, image_grids, merge, "image")
    video_positions = _pad_positions(input_ids, token_ids.video_token_id, video_grids, merge, "video")
    position_ids, rope_delta = get_rope_index(input_ids, image_grids or None, video_grids or None,
                                              spatial_merge_size=merge, image_token_id=token_ids.image_token_id,
                                              video_token_id=token_ids.video_token_id)
    pixels = [p for p, g in ((pixel_values, image_grids), (pixel_values_videos, video_grids)) if g and p is not None]
    return PromptInputs(
        input_ids=input_ids,
        position_ids=position_ids,
        rope_delta=rope_delta,
        num_query_tokens=num_query_tokens,
        pixel_values=torch.cat(pixels) if pixels else None,
        grid_thw=image_grids + video_grids,
        vision_positions=torch.cat([image_positions, video_positions]),
    )
