"""InternViT's input contract: 448x448 tiles, planned from metadata alone (no torch at import).

A video frame is ONE tile: the frame resized to 448x448 (bicubic with antialias on uint8 tensors, as
HF's `InternVLVideoProcessor` does; no dynamic tiling, as in the reference video evaluation). An
image is cut into tiles as HF's image processor does with `crop_to_patches` (its processor's
default): the tile grid whose aspect ratio is closest to the image's (1 to `max_tiles` tiles), the
image resized to that canvas with Pillow's bicubic, cut row by row, plus a 448x448 thumbnail of
the whole image when there is more than one tile. Each tile is one encoding unit of grid
`(1, 32, 32)` patches of 14 pixels; after the pixel shuffle (downsample ratio 1/2, `merge_size` 2)
it is 256 LLM tokens. An item of T tiles has grid `(T, 32, 32)`: units never attend to each other,
so frame-parallel encoding is exact.

`InternVisionSpec.preprocess` (torch, on the model rank's device; `spava.models.internvl.pixels`)
turns uint8 tiles into pixel rows `[T*1024, 588]`, which the adapter folds back into images.
"""

from __future__ import annotations

from dataclasses import dataclass

from spava.models.vision_spec import VisionSpec, VisualPlan

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TILE_SIZE, PATCH_SIZE = 448, 14
MIN_TILES, MAX_TILES = 1, 12  # GotOcr2ImageProcessor's defaults (min_patches / max_patches)


def tile_arrangements(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """(columns, rows) with `min_tiles <= columns * rows <= max_tiles`, fewest tiles first (ties: by
    columns, then rows)."""
    grids = [(columns, rows) for columns in range(1, max_tiles + 1) for rows in range(1, max_tiles + 1)
             if min_tiles <= columns * rows <= max_tiles]
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def tile_grid(height: int, width: int, tile_size: int = TILE_SIZE, min_tiles: int = MIN_TILES,
              max_tiles: int = MAX_TILES) -> tuple[int, int]:
    """(columns, rows) of tiles for a `height x width` image: the arrangement whose width / height ratio
    is closest to the image's; on a tie the one with more tiles, while the image's area exceeds half
    the canvas (so small images are not blown up)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect_ratio, area = width / height, width * height
    best, best_difference = (1, 1), float("inf")
    for columns, rows in tile_arrangements(min_tiles, max_tiles):
        difference = abs(aspect_ratio - columns / rows)
        if difference < best_difference:
            best, best_difference = (columns, rows), difference
        elif difference == best_difference and area > 0.5 * tile_size * tile_size * columns * rows:
            best = (columns, rows)
    return best


@dataclass(frozen=True)
class InternVisionSpec(VisionSpec):
    """InternViT's contract (see the module docstring). `temporal_patch_size` is 1 (a unit is one
    tile), `merge_size` is 1 / downsample_ratio; the pixel bounds of `VisionSpec` are unused.

    Attributes:
        tile_size: side of a tile in pixels (the tower's image_size, 448).
        min_tiles, max_tiles: tile counts allowed for an image (a thumbnail comes on top).
        is_image_tiled: cut images into tiles (HF's processor default); False: one 448x448 tile.
    """

    tile_size: int = TILE_SIZE
    min_tiles: int = MIN_TILES
    max_tiles: int = MAX_TILES
    is_image_tiled: bool = True

    @property
    def grid_side(self) -> int:
        """Patches along a tile's side (32)."""
        return self.tile_size // self.patch_size

    @property
    def tokens_per_tile(self) -> int:
        """LLM tokens of one tile after the pixel shuffle (256)."""
        return self.grid_side ** 2 // self.merge_size ** 2

    def _plan_tiles(self, num_tiles: int) -> VisualPlan:
        side = self.grid_side
        return VisualPlan((self.tile_size, self.tile_size), (num_tiles, side, side), num_tiles * self.tokens_per_tile)

    def plan(self, num_frames: int, height: int, width: int, min_pixels: int = 0, max_pixels: int = 0) -> VisualPlan:
        """A video of `num_frames` frames: one tile each, whatever their size (pixel bounds unused)."""
        if num_frames < 1:
            raise ValueError(f"a visual item needs at least one frame, got {num_frames}")
        if height < 1 or width < 1:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        return self._plan_tiles(num_frames)

    def image_tiles(self, height: int, width: int) -> tuple[int, int, bool]:
        """(columns, rows, has_thumbnail) of an image's tiles."""
        if not self.is_image_tiled or self.max_tiles <= 1:
            return 1, 1, False
        columns, rows = tile_grid(height, width, self.tile_size, self.min_tiles, self.max_tiles)
        return columns, rows, columns * rows > 1

    def plan_image(self, height: int, width: int) -> VisualPlan:
        columns, rows, has_thumbnail = self.image_tiles(height, width)
        return self._plan_tiles(columns * rows + int(has_thumbnail))

    def image_frames(self, image, visual: VisualPlan):
        """uint8 `[H, W, 3]` -> its tiles `[T, 448, 448, 3]` (row-major, then the thumbnail), with
        Pillow's bicubic as HF's image processor (its Pillow backend bit for bit)."""
        import numpy as np

        from spava.media.images import resize_image

        columns, rows, has_thumbnail = self.image_tiles(*image.shape[:2])
        side = self.tile_size
        canvas = resize_image(image, rows * side, columns * side)
        tiles = [canvas[row * side:(row + 1) * side, column * side:(column + 1) * side]
                 for row in range(rows) for column in range(columns)]
        if has_thumbnail:
            tiles.append(resize_image(image, side, side))
        frames = np.stack(tiles)
        if len(frames) != visual.grid_thw[0]:
            raise ValueError(f"the image makes {len(frames)} tiles but its plan has {visual.grid_thw[0]}")
        return frames

    def preprocess(self, frames, resized_hw: tuple[int, int], kind: str = "video", dtype=None):
        """uint8 frames `[T, H, W, 3]` (torch, any device) -> pixel rows `[T*1024, 588]` (see pixels.py)."""
        from spava.models.internvl.pixels import preprocess_tiles

        return preprocess_tiles(self, frames, kind, dtype)


def make_vision_spec(vision_config: dict, downsample_ratio: float = 0.5, processor_config: dict | None = None):
    """The `InternVisionSpec` of a checkpoint: config.json's `vision_config` (a dict), its
    `downsample_ratio` and, when present, preprocessor_config.json (tile counts, mean / std)."""
    processor = processor_config or {}
    image_size = vision_config.get("image_size", TILE_SIZE)
    patch_size = vision_config.get("patch_size", PATCH_SIZE)
    tile_size = image_size[0] if isinstance(image_size, (list, tuple)) else int(image_size)
    patch = patch_size[0] if isinstance(patch_size, (list, tuple)) else int(patch_size)
    merge = round(1 / downsample_ratio)
    if tile_size % (patch * merge):
        raise ValueError(f"tiles of {tile_size} pixels do not split into {patch}-pixel patches merged {merge}x{merge}")
    size = processor.get("size") or {}
    if size.get("height", tile_size) != tile_size or size.get("width", tile_size) != tile_size:
        raise ValueError(f"preprocessor_config.json resizes to {size}, but the vision tower takes {tile_size}x"
                         f"{tile_size} tiles; fix the checkpoint's preprocessor_config.json")
    area = tile_size * tile_size
    return InternVisionSpec(
        patch_size=patch, temporal_patch_size=1, merge_size=merge,
        image_mean=tuple(processor.get("image_mean", IMAGENET_MEAN)),
        image_std=tuple(processor.get("image_std", IMAGENET_STD)),
        video_min_pixels=area, video_max_pixels=area, image_min_pixels=area, image_max_pixels=area,
        tile_size=tile_size, min_tiles=int(processor.get("min_patches", MIN_TILES)),
        max_tiles=int(processor.get("max_patches", MAX_TILES)),
    )
