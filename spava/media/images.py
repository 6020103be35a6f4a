"""Still images: decode a path / bytes / array into uint8 RGB `[H, W, 3]`, and resize like HF's processor.

Images take Hugging Face's image-processor path: Pillow decodes (EXIF orientation applied, as
`transformers.image_utils.load_image` does), converts to RGB, and resizes with bicubic
resampling; the model ranks then only patchify and normalise.
"""

from __future__ import annotations

import io
import os

import numpy as np


class ImageDecodeError(ValueError):
    """The image cannot be read; the message says what was wrong and what to do."""


def load_image(source) -> np.ndarray:
    """A path, encoded bytes, or a uint8 array `[H, W, 3]` / `[1, H, W, 3]` -> uint8 RGB `[H, W, 3]`."""
    if isinstance(source, np.ndarray):
        array = source[0] if source.ndim == 4 and source.shape[0] == 1 else source
        if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise ImageDecodeError(f"an image array must be uint8 RGB [H, W, 3], got {array.dtype} {array.shape}")
        return np.ascontiguousarray(array)
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "the image bytes"
    try:
        with Image.open(source if isinstance(source, (str, os.PathLike)) else io.BytesIO(source)) as image:
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise ImageDecodeError(f"image file {label} does not exist") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ImageDecodeError(f"{label} is not a readable image ({error}); pass a PNG, JPEG or WebP file") from None


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow bicubic resize of uint8 `[H, W, 3]` to `[height, width, 3]` (unchanged when it has that size)."""
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), resample=Image.Resampling.BICUBIC))
