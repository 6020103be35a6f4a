"""InternViT pixels on the model rank's device: uint8 tiles -> pixel rows -> the tower's images.

`preprocess_tiles` resizes each frame to one 448x448 tile like HF's `InternVLVideoProcessor`
(bicubic with antialias on uint8 tensors: `spava.models.preprocess.resize_frames`; image tiles
arrive at 448x448 already, cut by the video worker with Pillow) and normalises with ImageNet's
mean / std as HF's processors do: `(x - 255*mean) / (255*std)` for video frames (the video
processor's fused form), `(x / 255 - mean) / std` for image tiles (the image processor's). Rows are
14x14 patches in raster order, columns `(channel, y, x)`, so the rows of tile t are
`[t*1024, (t+1)*1024)` and a unit's rows are contiguous, as the encoding units expect.
`rows_to_images` is the exact inverse, for the adapter's `encode`.
"""

from __future__ import annotations

import torch

from spava.models.preprocess import normalize_rows, resize_frames
from spava.models.vision_spec import NUM_CHANNELS


def preprocess_tiles(spec, frames: torch.Tensor, kind: str = "video", dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 frames `[T, H, W, 3]` -> pixel rows `[T * side**2, 3 * patch**2]` in `dtype` (float32)."""
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != NUM_CHANNELS:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    tiles = resize_frames(frames, spec.tile_size, spec.tile_size)
    rows = tiles_to_rows(tiles, spec.patch_size)
    return normalize_rows(rows, spec.image_mean, spec.image_std, is_image=kind == "image", dtype=dtype or torch.float32)


def tiles_to_rows(tiles: torch.Tensor, patch: int) -> torch.Tensor:
    """`[T, S, S, C]` (any dtype) -> `[T * (S/patch)**2, C * patch**2]`: patches in raster order."""
    num_tiles, size, _, channels = tiles.shape
    side = size // patch
    patches = tiles.reshape(num_tiles, side, patch, side, patch, channels).permute(0, 1, 3, 5, 2, 4)
    return patches.reshape(num_tiles * side * side, channels * patch * patch)


def rows_to_images(rows: torch.Tensor, num_tiles: int, side: int, patch: int) -> torch.Tensor:
    """Pixel rows `[T * side**2, C * patch**2]` -> images `[T, C, side*patch, side*patch]` (inverse of
    `tiles_to_rows` followed by channels-first)."""
    channels = rows.shape[1] // (patch * patch)
    if rows.shape[0] != num_tiles * side * side:
        raise ValueError(f"{rows.shape[0]} pixel rows do not make {num_tiles} tiles of {side}x{side} patches")
    images = rows.reshape(num_tiles, side, side, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return images.reshape(num_tiles, channels, side * patch, side * patch)
