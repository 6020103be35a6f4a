"""Synthetic benchmark requests: a video of F frames at a paper resolution, already decoded.

Frames are smart-resized as qwen-vl-utils does for a list of frames, with the image limits of the
model's tower (4 to 16384 merged patches per frame, so paper resolutions keep their size). With
Qwen2.5-VL (factor 28): 640x360 -> 644x364 (299 tokens per 2 frames), 1280x720 -> 1288x728 (1,196),
1920x1080 -> 1932x1092 (2,691), 2560x1440 -> 2548x1428 (4,641); with Qwen3-VL (factor 32):
640x360 -> 640x352 (220), 1280x720 -> 1280x736 (920), 1920x1080 -> 1920x1088 (2,040),
2560x1440 -> 2560x1440 (3,600). The prompt is the family's own (its processor, the bundled
tokenizer): "What is in this video?" about the video, frames 0.5 s apart; pixel rows are random
(speed does not depend on their values).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spava.comm.messages import TensorRef, VisualItem
from spava.models.inputs import PromptInputs

RESOLUTIONS = {360: (360, 640), 720: (720, 1280), 1080: (1080, 1920), 1440: (1440, 2560)}
MIN_MERGED_PATCHES, MAX_MERGED_PATCHES = 4, 16384  # per frame, in units of factor**2 pixels
QUESTION = "What is in this video?"
FRAMES_PER_SECOND = 2.0


@dataclass(frozen=True)
class VideoCase:
    resolution: int
    num_frames: int

    def grid_thw(self, spec) -> tuple[int, int, int]:
        """Patch grid of the case's frames for the tower of `spec` (a `VisionSpec`)."""
        height, width = RESOLUTIONS[self.resolution]
        area = spec.factor ** 2
        return spec.plan(self.num_frames, height, width, MIN_MERGED_PATCHES * area, MAX_MERGED_PATCHES * area).grid_thw

    def num_visual_tokens(self, spec) -> int:
        grid_t, grid_h, grid_w = self.grid_thw(spec)
        return grid_t * grid_h * grid_w // spec.merge_size ** 2

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

    def grid_thw(self, spec=None) -> tuple[int, int, int]:
        return self.grid

    def num_visual_tokens(self, spec) -> int:
        grid_t, grid_h, grid_w = self.grid
        return grid_t * grid_h * grid_w // spec.merge_size ** 2

    @property
    def label(self) -> str:
        return self.name


def make_inputs(case: VideoCase | GridCase, processor, spec, *, seed: int = 0, device="cpu",
                pixel_dtype=torch.float32, system_prompt: str = "You are a helpful assistant.") -> PromptInputs:
    """PromptInputs of one synthetic request through the family's `processor` (`Processor`) for the
    tower of `spec` (`VisionSpec`); pixel rows `[t*h*w, patch_dim]` are created directly on `device`."""
    grid = case.grid_thw(spec)
    num_frames = grid[0] * spec.temporal_patch_size
    resized = [grid[1] * spec.patch_size, grid[2] * spec.patch_size]
    item = VisualItem("video", TensorRef("", [num_frames, *resized, 3], "uint8"), None, list(grid), resized,
                      [index / FRAMES_PER_SECOND for index in range(num_frames)],
                      spec.temporal_patch_size / FRAMES_PER_SECOND)
    inputs = processor.build_inputs(QUESTION, document=None, items=[item], system_prompt=system_prompt)
    generator = torch.Generator(device=device).manual_seed(seed)
    inputs.pixel_values = torch.randn(grid[0] * grid[1] * grid[2], spec.patch_dim, generator=generator,
                                      device=device, dtype=pixel_dtype)
    return inputs
