"""Synthetic benchmark requests: a video of F frames at a paper resolution, already decoded.

Frames are smart-resized as qwen-vl-utils does for a list of frames (image limits: up to
16384 * 28 * 28 pixels, so paper resolutions keep their size): 640x360 -> 644x364 (299 tokens per
2 frames), 1280x720 -> 1288x728 (1,196), 1920x1080 -> 1932x1092 (2,691), 2560x1440 -> 2548x1428 (4,641).
Token ids are random text around the video placeholders; speed does not depend on their values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spava.models.qwen2_5_vl.inputs import build_prompt_inputs
from spava.models.qwen2_5_vl.processing import smart_resize
from spava.models.inputs import PromptInputs

RESOLUTIONS = {360: (360, 640), 720: (720, 1280), 1080: (1080, 1920), 1440: (1440, 2560)}
FRAME_MIN_PIXELS, FRAME_MAX_PIXELS = 4 * 28 * 28, 16384 * 28 * 28
NUM_SYSTEM_TOKENS, NUM_QUERY_TOKENS = 14, 11  # "What is in this video?" + the assistant prefix
PATCH_DIM = 3 * 2 * 14 * 14


@dataclass(frozen=True)
class VideoCase:
    resolution: int
    num_frames: int

    def grid_thw(self) -> tuple[int, int, int]:
        height, width = RESOLUTIONS[self.resolution]
        resized_h, resized_w = smart_resize(height, width, 28, FRAME_MIN_PIXELS, FRAME_MAX_PIXELS)
        return (self.num_frames + 1) // 2, resized_h // 14, resized_w // 14

    def num_visual_tokens(self) -> int:
        grid_t, grid_h, grid_w = self.grid_thw()
        return grid_t * grid_h * grid_w // 4

    @property
    def label(self) -> str:
        return f"{self.resolution}p x {self.num_frames}f"


@dataclass(frozen=True)
class GridCase:
    """A case given by its patch grid (e.g. what a real file's frames make), labelled freely."""

    grid: tuple[int, int, int]
    name: str
    resolution: int = 0
    num_frames: int = 0

    def grid_thw(self) -> tuple[int, int, int]:
        return self.grid

    def num_visual_tokens(self) -> int:
        grid_t, grid_h, grid_w = self.grid
        return grid_t * grid_h * grid_w // 4

    @property
    def label(self) -> str:
        return self.name


def make_inputs(case: VideoCase | GridCase, token_ids, *, seed: int = 0, device="cpu",
                pixel_dtype=torch.float32) -> PromptInputs:
    """PromptInputs of one synthetic request; pixel rows are created directly on `device`."""
    generator = torch.Generator().manual_seed(seed)
    grid = case.grid_thw()
    num_pads = case.num_visual_tokens()
    ids = torch.cat([
        torch.randint(100, 150_000, (NUM_SYSTEM_TOKENS,), generator=generator),
        torch.tensor([token_ids.vision_start_token_id]),
        torch.full((num_pads,), token_ids.video_token_id),
        torch.tensor([token_ids.vision_start_token_id + 1]),  # <|vision_end|>
        torch.randint(100, 150_000, (NUM_QUERY_TOKENS,), generator=generator),
    ])
    num_patches = grid[0] * grid[1] * grid[2]
    device_generator = torch.Generator(device=device).manual_seed(seed)
    pixels = torch.randn(num_patches, PATCH_DIM, generator=device_generator, device=device, dtype=pixel_dtype)
    inputs = build_prompt_inputs(ids, NUM_QUERY_TOKENS, token_ids, pixel_values_videos=torch.empty(0, PATCH_DIM),
                                 video_grid_thw=[grid], second_per_grid_ts=[1.0])
    inputs.pixel_values = pixels
    return inputs
