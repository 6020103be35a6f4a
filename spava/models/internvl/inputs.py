"""Assemble `PromptInputs` for InternVL3 from token ids and the visual items' tile grids.

Positions are plain `arange(N)` (1-D RoPE, no offset for decoding). Every `<IMG_CONTEXT>` token is
a visual position, in order: the tiles' features fill them in tile order, as HF's
`masked_scatter` does. A count that does not match the grids is an error for that request.
"""

from __future__ import annotations

import torch

from spava.models.inputs import PromptInputs


def build_prompt_inputs(input_ids, num_query_tokens: int, image_token_id: int, grid_thw=(),
                        tokens_per_tile: int = 256, pixel_values: torch.Tensor | None = None) -> PromptInputs:
    """Everything a rank needs to run one InternVL3 request (CPU tensors, identical on all ranks).

    Args:
        input_ids: `[N]` full prompt; grid_thw: `(t, h, w)` per visual item (t tiles each);
        pixel_values: `[sum t*h*w, 588]` pixel rows when made already (tests, benchmarks).
    """
    input_ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    grids = [tuple(int(x) for x in grid) for grid in grid_thw]
    positions = torch.nonzero(input_ids == image_token_id).flatten()
    expected = sum(grid[0] for grid in grids) * tokens_per_tile
    if positions.numel() != expected:
        raise ValueError(f"the prompt has {positions.numel()} image context tokens but its {sum(g[0] for g in grids)} "
                         f"tiles need {expected}; build it with spava.models.internvl.prompt from the same grids")
    return PromptInputs(
        input_ids=input_ids,
        position_ids=torch.arange(input_ids.numel()),
        num_query_tokens=num_query_tokens,
        pixel_values=pixel_values,
        grid_thw=grids,
        vision_positions=positions,
    )
