"""Assemble `PromptInputs` for Qwen2.5-VL from token ids and preprocessed pixels.

Checks that the placeholder tokens in the prompt match the vision grids (a mismatch is a clear
error for that request, not a crash deep inside the model), computes the full-prompt M-RoPE
positions once, and orders vision items as the model scatters them: images first, then videos.
"""

from __future__ import annotations

import torch

from spava.models.qwen2_5_vl.model import VisionTokenIds
from spava.models.qwen2_5_vl.rope import get_mrope_position_ids
from spava.models.inputs import PromptInputs


def _grids(grid_thw) -> list[tuple[int, int, int]]:
    if grid_thw is None:
        return []
    return [tuple(int(x) for x in row) for row in torch.as_tensor(grid_thw).reshape(-1, 3).tolist()]


def _check_placeholders(input_ids, token_id: int, grids, merge_size: int, kind: str) -> torch.Tensor:
    positions = torch.nonzero(input_ids == token_id).flatten()
    expected = sum(t * h * w for t, h, w in grids) // (merge_size * merge_size)
    if positions.numel() != expected:
        raise ValueError(
            f"the prompt has {positions.numel()} {kind} placeholder tokens but the {kind} grids need {expected}; "
            f"build the prompt with build_chat_prompt from the same {kind}_grid_thw"
        )
    return positions


def build_prompt_inputs(
    input_ids: torch.Tensor,
    num_query_tokens: int,
    token_ids: VisionTokenIds,
    *,
    pixel_values: torch.Tensor | None = None,
    image_grid_thw=None,
    pixel_values_videos: torch.Tensor | None = None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    is_transformers5_compat: bool = False,
) -> PromptInputs:
    """Everything a rank needs to run one Qwen2.5-VL request (CPU tensors, identical on all ranks).

    Args:
        input_ids: `[N]` full prompt; pixel_values `[Pi, 1176]` / pixel_values_videos `[Pv, 1176]`
            with their `[K, 3]` grids; second_per_grid_ts: seconds per temporal grid per video.
        is_transformers5_compat: positions exactly as transformers 5.3-5.17 compute them (see rope.py).
    """
    input_ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    image_grids, video_grids = _grids(image_grid_thw), _grids(video_grid_thw)
    merge = token_ids.spatial_merge_size
    image_positions = _check_placeholders(input_ids, token_ids.image_token_id, image_grids, merge, "image")
    video_positions = _check_placeholders(input_ids, token_ids.video_token_id, video_grids, merge, "video")
    position_ids, rope_delta = get_mrope_position_ids(
        input_ids, video_grid_thw=video_grids or None, image_grid_thw=image_grids or None,
        second_per_grid_ts=second_per_grid_ts, spatial_merge_size=merge,
        tokens_per_second=token_ids.tokens_per_second, image_token_id=token_ids.image_token_id,
        video_token_id=token_ids.video_token_id, vision_start_token_id=token_ids.vision_start_token_id,
        is_transformers5_compat=is_transformers5_compat,
    )
    pixels = [p for p, g in ((pixel_values, image_grids), (pixel_values_videos, video_grids)) if g and p is not None]
    return PromptInputs(
        input_ids=input_ids,
        position_ids=position_ids,
        rope_delta=int(rope_delta),
        num_query_tokens=num_query_tokens,
        pixel_values=torch.cat(pixels) if pixels else None,
        grid_thw=image_grids + video_grids,
        vision_positions=torch.cat([image_positions, video_positions]),
    )
