"""A model family's vision-tower input contract, planned from metadata alone (no torch, no pixels).

`VisionSpec` holds the numbers of a Qwen2-VL-style tower (Qwen2.5-VL, Qwen3-VL): patch sizes,
normalisation, default pixel bounds. `plan(num_frames, height, width, ...)` gives the resized frame
size, the patch grid `(t, h, w)` and the number of LLM tokens, so the video stage checks budgets
before decoding and the layout stage builds the prompt without touching a pixel. `preprocess`
(implemented in `spava.models.preprocess`, torch) turns uint8 frames into the tower's pixel rows on
the model rank's own device. Images go through `plan_image` and `image_frames` (the video worker
turns a decoded image into the frames it stores, with Pillow, as HF's image processors do). A tower
that takes something else (e.g. InternViT's 448x448 tiles, `spava.models.internvl.vision`)
subclasses `VisionSpec` and overrides these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# smart_resize refuses frames more elongated than this, like HF.
MAX_ASPECT_RATIO = 200
NUM_CHANNELS = 3


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 16384) -> tuple[int, int]:
    """Qwen2-VL's target frame size ``(height', width')`` (same rule and float arithmetic as HF).

    Both sides become multiples of ``factor``. The area is brought into
    ``[min_pixels, max_pixels]`` and the aspect ratio is kept as closely as possible. Sides
    are first rounded to the nearest multiple (Python's round-half-even, as HF). If the area
    is too large, both sides are scaled by ``sqrt(area / max_pixels)`` and floored. If it is
    too small, they are scaled up and ceiled.
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    aspect_ratio = max(height, width) / min(height, width)
    if aspect_ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"a frame of {width}x{height} has aspect ratio {aspect_ratio:.1f} > {MAX_ASPECT_RATIO}, which "
            "the vision tower cannot patchify; crop or pad it to a less elongated shape"
        )
    resized_height = round(height / factor) * factor
    resized_width = round(width / factor) * factor
    if resized_height * resized_width > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        resized_height = max(factor, math.floor(height / beta / factor) * factor)
        resized_width = max(factor, math.floor(width / beta / factor) * factor)
    elif resized_height * resized_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_height = math.ceil(height * beta / factor) * factor
        resized_width = math.ceil(width * beta / factor) * factor
    return resized_height, resized_width


@dataclass(frozen=True)
class VisualPlan:
    """One item's layout from metadata: resized size, patch grid, LLM tokens."""

    resized_hw: tuple[int, int]
    grid_thw: tuple[int, int, int]
    num_tokens: int


@dataclass(frozen=True)
class VisionSpec:
    """A Qwen2-VL-style vision tower's input contract (see the module docstring).

    Attributes:
        patch_size: spatial patch side in pixels (14 for Qwen2.5-VL, 16 for Qwen3-VL).
        temporal_patch_size: frames per temporal patch (2).
        merge_size: side of the square of patches merged into one LLM token (2).
        image_mean, image_std: per-channel normalisation on the [0, 1] scale.
        video_min_pixels, video_max_pixels: default frame-area bounds for videos.
        image_min_pixels, image_max_pixels: default bounds for images.
    """

    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    video_min_pixels: int
    video_max_pixels: int
    image_min_pixels: int
    image_max_pixels: int

    @property
    def factor(self) -> int:
        """Resized sides are multiples of this (patch_size * merge_size)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Values per pixel row: channels * temporal_patch_size * patch_size**2."""
        return NUM_CHANNELS * self.temporal_patch_size * self.patch_size ** 2

    @property
    def frames_per_unit(self) -> int:
        """Frames of one encoding unit (one temporal grid: the tower never attends across them)."""
        return self.temporal_patch_size

    def plan(self, num_frames: int, height: int, width: int, min_pixels: int, max_pixels: int) -> VisualPlan:
        """Resized size, grid and token count of `num_frames` frames of `height x width` (no pixels)."""
        if num_frames < 1:
            raise ValueError(f"a visual item needs at least one frame, got {num_frames}")
        resized = smart_resize(height, width, self.factor, min_pixels, max_pixels)
        grid = (-(-num_frames // self.temporal_patch_size), resized[0] // self.patch_size,
                resized[1] // self.patch_size)
        return VisualPlan(resized, grid, grid[0] * grid[1] * grid[2] // self.merge_size ** 2)

    def plan_image(self, height: int, width: int) -> VisualPlan:
        """Plan of one `height x width` image (its stored frames, grid and tokens), from its size alone."""
        return self.plan(1, height, width, self.image_min_pixels, self.image_max_pixels)

    def image_frames(self, image, visual: VisualPlan):
        """uint8 image `[H, W, 3]` (numpy) -> the uint8 frames `[T, h, w, 3]` the video worker stores for
        it: here one frame, the image resized to `visual.resized_hw` (a tiling tower stores its tiles)."""
        from spava.media.images import resize_image

        return resize_image(image, *visual.resized_hw)[None]

    def preprocess(self, frames, resized_hw: tuple[int, int], kind: str = "video", dtype=None):
        """uint8 frames `[T, H, W, 3]` (torch, any device) -> pixel rows `[ceil(T/tp)*h*w, patch_dim]`.

        T need not be a multiple of temporal_patch_size (the last frame pads the last patch), so
        whole temporal patches of a video give exactly those patches' rows. dtype: float32 default.
        """
        from spava.models.preprocess import preprocess_qwen_frames

        return preprocess_qwen_frames(self, frames, resized_hw, kind, dtype)
