"""Qwen2.5-VL pixel preprocessing without torchvision, bit-identical to Hugging Face.

Role
----
Turns decoded RGB frames into the inputs of Qwen2.5-VL's vision tower. Pure functions on
CPU torch tensors; nothing here loads a model or decodes a file.

Inputs / outputs
----------------
* Video: ``frames`` uint8 ``[T, H, W, 3]`` (RGB, numpy or torch) ->
  ``pixel_values_videos`` float32 ``[num_patches, 1176]`` and ``video_grid_thw`` int64
  ``[num_videos, 3]`` (:func:`preprocess_videos`).
* Image: uint8 ``[H, W, 3]`` -> ``pixel_values`` / ``image_grid_thw`` (:func:`preprocess_images`);
  an image is a one-frame video padded to ``temporal_patch_size`` frames.

``1176 = 3 channels * 2 frames * 14 * 14``. ``num_patches = t * h * w`` for a grid
``(t, h, w) = (ceil(T / 2), H' / 14, W' / 14)`` where ``H' x W'`` is the
:func:`smart_resize` size. The LLM sees ``t * h * w / 4`` tokens per item
(:func:`num_vision_tokens`): the vision tower merges 2x2 patches.

Pipeline (Hugging Face's order)
-------------------------------
1. :func:`smart_resize` picks ``H' x W'`` (multiples of 28, pixel count in
   ``[min_pixels, max_pixels]``, aspect ratio kept).
2. :func:`resize_frames`: bicubic resize of every uint8 frame, result uint8.
3. :func:`patchify_frames`: pad ``T`` to a multiple of 2 by repeating the last frame, then
   lay the patches out exactly as HF does: rows ordered ``(t, h/2, w/2, 2, 2)`` (the 2x2
   merge groups are contiguous), columns ordered ``(channel, frame, 14, 14)``.
4. :func:`normalize_patches`: ``x / 255`` then ``(x - mean) / std`` in float32.

We patchify the uint8 frames and normalise afterwards. Both steps are a permutation or
elementwise, so the order changes no bit of the result, but the permutation then moves
a quarter of the bytes.

Resize backends (``QwenProcessorConfig.resize_backend``)
--------------------------------------------------------
``"pil"`` (default) runs Pillow's bicubic on uint8 frames and then
``((x / 255) - mean) / std`` in float32. That is exactly what transformers'
``Qwen2VLImageProcessorPil`` does. In transformers 5.x it is the only Qwen2-VL processor
that works without torchvision, and the tests show that our output is bit-identical to
it. Needs Pillow.

``"torch"`` runs ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` on
CPU uint8 tensors. On CPU, torchvision's ``resize`` calls exactly this for uint8 bicubic,
so the torchvision-backed ``Qwen2VLImageProcessor`` / ``Qwen2VLVideoProcessor`` do the
same. The normalisation is then fused as they fuse it: ``(x - 255*mean) / (255*std)``.
We cannot check this backend against those processors here (they need torchvision).
Pillow's uint8 kernel and torch's differ by one level on about 0.5% of the pixels, so
the two backends are close but not bit-identical. (On CUDA, torchvision resizes in
float32, which gives different results again; this module always works on CPU.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from spava.models.vision_spec import MAX_ASPECT_RATIO, smart_resize  # noqa: F401 - re-exported

# CLIP normalisation constants used by Qwen2-VL / Qwen2.5-VL (transformers' OPENAI_CLIP_MEAN/STD).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Qwen2.5-VL checkpoints' preprocessor_config.json (images): 4 and 16384 merged 28x28 patches.
DEFAULT_IMAGE_MIN_PIXELS = 56 * 56
DEFAULT_IMAGE_MAX_PIXELS = 28 * 28 * 16384
# qwen-vl-utils' video bounds, also transformers' Qwen2VLVideoProcessor class defaults.
DEFAULT_VIDEO_MIN_PIXELS = 128 * 28 * 28
DEFAULT_VIDEO_MAX_PIXELS = 768 * 28 * 28

RESIZE_BACKENDS = ("pil", "torch")
NUM_CHANNELS = 3

ArrayLike = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class QwenProcessorConfig:
    """Qwen2.5-VL vision preprocessing settings. The defaults are the checkpoints' image settings.

    Attributes:
        patch_size: spatial patch side of the vision tower, in pixels (14).
        temporal_patch_size: frames per temporal patch (2).
        merge_size: side of the square of patches merged into one LLM token (2).
        min_pixels: smallest resized frame area, in pixels.
        max_pixels: largest resized frame area, in pixels.
        image_mean: per-channel mean (RGB) on the [0, 1] scale.
        image_std: per-channel standard deviation (RGB) on the [0, 1] scale.
        resize_backend: "pil" (bit-identical to HF's Qwen2VLImageProcessorPil) or "torch"
            (the arithmetic of HF's torchvision-backed processors on CPU); see the module docstring.
    """

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = DEFAULT_IMAGE_MIN_PIXELS
    max_pixels: int = DEFAULT_IMAGE_MAX_PIXELS
    image_mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: tuple[float, ...] = OPENAI_CLIP_STD
    resize_backend: str = "pil"

    def __post_init__(self) -> None:
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"QwenProcessorConfig.{name} must be a positive integer, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"QwenProcessorConfig.min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels}); "
                "lower min_pixels or raise max_pixels"
            )
        if len(self.image_mean) != NUM_CHANNELS or len(self.image_std) != NUM_CHANNELS:
            raise ValueError(f"image_mean and image_std need {NUM_CHANNELS} values (RGB)")
        if self.resize_backend not in RESIZE_BACKENDS:
            raise ValueError(
                f"QwenProcessorConfig.resize_backend must be one of {RESIZE_BACKENDS}, got {self.resize_backend!r}"
            )

    @property
    def factor(self) -> int:
        """Side in pixels that the resized height and width are multiples of (patch_size * merge_size = 28)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Values per patch row: channels * temporal_patch_size * patch_size**2 (1176)."""
        return NUM_CHANNELS * self.temporal_patch_size * self.patch_size * self.patch_size

    @classmethod
    def for_video(cls, **overrides) -> QwenProcessorConfig:
        """Video defaults: 128..768 merged patches per frame (qwen-vl-utils / HF video processor)."""
        base = cls(min_pixels=DEFAULT_VIDEO_MIN_PIXELS, max_pixels=DEFAULT_VIDEO_MAX_PIXELS)
        return replace(base, **overrides)


def get_grid_thw(num_frames: int, height: int, width: int, config: QwenProcessorConfig) -> tuple[int, int, int]:
    """Patch grid ``(t, h, w)`` of a ``num_frames``-frame ``height x width`` video, without any pixels.

    ``t = ceil(num_frames / temporal_patch_size)`` (the last frame is repeated to pad), and
    ``h, w`` = the smart-resized sides divided by ``patch_size``. Use this to plan token
    budgets before decoding.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got num_frames={num_frames}")
    resized_height, resized_width = smart_resize(
        height, width, config.factor, config.min_pixels, config.max_pixels
    )
    num_grids_t = -(-num_frames // config.temporal_patch_size)
    return num_grids_t, resized_height // config.patch_size, resized_width // config.patch_size


def num_vision_tokens(grid_thw: torch.Tensor | Sequence, merge_size: int = 2) -> int:
    """LLM tokens taken by one or more vision items: ``sum(t * h * w) / merge_size**2``.

    Args:
        grid_thw: ``[3]`` for one item or ``[num_items, 3]`` (tensor or nested sequence).
        merge_size: spatial merge size (2 for Qwen2.5-VL).
    """
    grids = torch.as_tensor(grid_thw, dtype=torch.int64).reshape(-1, 3)
    if bool((grids[:, 1:] % merge_size != 0).any()):
        raise ValueError(f"grid heights and widths must be multiples of merge_size={merge_size}, got {grids.tolist()}")
    return int((grids.prod(dim=1) // (merge_size * merge_size)).sum())


def _as_uint8_frames(frames: ArrayLike, name: str) -> torch.Tensor:
    """Validate and convert ``[T, H, W, 3]`` uint8 frames (numpy or torch) to a CPU torch tensor."""
    tensor = torch.from_numpy(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if tensor.ndim != 4 or tensor.shape[-1] != NUM_CHANNELS:
        raise ValueError(f"{name} must have shape [T, H, W, 3] (RGB, channels last), got {tuple(tensor.shape)}")
    if tensor.dtype != torch.uint8:
        # HF rescales floats differently (no 1/255 for float inputs in some paths); keep one exact contract.
        raise ValueError(f"{name} must be uint8 RGB frames, got dtype {tensor.dtype}; decode to uint8 first")
    if tensor.shape[0] < 1:
        raise ValueError(f"{name} has no frames")
    return tensor.cpu()


def _import_pillow():
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(
            "resize_backend='pil' needs Pillow: `pip install pillow`, or use "
            "QwenProcessorConfig(resize_backend='torch')"
        ) from error
    return Image


def _resize_frames_pil(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pillow bicubic resize of uint8 ``[T, H, W, 3]`` frames -> ``[T, height, width, 3]`` uint8.

    Frames are resized on ``torch.get_num_threads()`` threads (Pillow releases the GIL while it
    resizes); every frame is resized exactly as alone, so the result does not depend on the count.
    """
    image_module = _import_pillow()
    resized = np.empty((frames.shape[0], height, width, NUM_CHANNELS), dtype=np.uint8)
    source = frames.numpy()

    def resize_one(index: int) -> None:
        image = image_module.fromarray(np.ascontiguousarray(source[index]))
        # PIL takes (width, height); BICUBIC is HF's resample for Qwen2-VL.
        resized[index] = np.asarray(image.resize((width, height), resample=image_module.Resampling.BICUBIC))

    num_threads = min(torch.get_num_threads(), frames.shape[0])
    if num_threads <= 1:
        for index in range(frames.shape[0]):
            resize_one(index)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(num_threads) as pool:
            list(pool.map(resize_one, range(frames.shape[0])))
    return torch.from_numpy(resized)


def _resize_frames_torch(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torch CPU uint8 bicubic (antialias) resize, as torchvision runs it: ``[T, H, W, 3]`` -> ``[T, h, w, 3]``."""
    channels_first = frames.permute(0, 3, 1, 2)  # a channels-last view; interpolate keeps the layout
    resized = F.interpolate(channels_first, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return resized.permute(0, 2, 3, 1)


def resize_frames(frames: torch.Tensor, height: int, width: int, backend: str = "pil") -> torch.Tensor:
    """Bicubic resize of uint8 frames ``[T, H, W, 3]`` -> ``[T, height, width, 3]`` uint8.

    Frames that already have the target size are returned unchanged, as both Pillow and
    torchvision do.
    """
    if tuple(frames.shape[1:3]) == (height, width):
        return frames
    if backend == "pil":
        return _resize_frames_pil(frames, height, width)
    if backend == "torch":
        return _resize_frames_torch(frames, height, width)
    raise ValueError(f"unknown resize backend {backend!r}; use one of {RESIZE_BACKENDS}")


def patchify_frames(
    frames: torch.Tensor, patch_size: int = 14, temporal_patch_size: int = 2, merge_size: int = 2
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Cut frames ``[T, H, W, C]`` (any dtype) into HF-ordered patches ``[t*h*w, C*tp*ps*ps]``.

    ``T`` is padded to a multiple of ``temporal_patch_size`` by repeating the last frame.
    Row order is ``(t, h/merge, w/merge, merge_row, merge_col)``: the ``merge**2`` patches
    that the vision tower merges into one LLM token are consecutive rows. Column order is
    ``(channel, frame in patch, patch row, patch col)``.

    Returns:
        patches ``[t*h*w, C*temporal_patch_size*patch_size**2]`` with the dtype of ``frames``,
        and the grid ``(t, h, w)`` in patches.
    """
    num_frames, height, width, num_channels = frames.shape
    factor = patch_size * merge_size
    if height % factor or width % factor:
        raise ValueError(f"frame size {height}x{width} is not a multiple of {factor}; smart_resize the frames first")
    num_pad = -num_frames % temporal_patch_size
    if num_pad:
        frames = torch.cat([frames, frames[-1:].expand(num_pad, -1, -1, -1)], dim=0)
    grid_t = frames.shape[0] // temporal_patch_size
    grid_h, grid_w = height // patch_size, width // patch_size
    blocks = frames.reshape(
        grid_t, temporal_patch_size,
        grid_h // merge_size, merge_size, patch_size,
        grid_w // merge_size, merge_size, patch_size,
        num_channels,
    )
    # -> (t, h/m, w/m, m_row, m_col, channel, frame, patch_row, patch_col)
    blocks = blocks.permute(0, 2, 5, 3, 6, 8, 1, 4, 7)
    patches = blocks.reshape(grid_t * grid_h * grid_w, num_channels * temporal_patch_size * patch_size * patch_size)
    return patches, (grid_t, grid_h, grid_w)


def normalize_patches(patches: torch.Tensor, config: QwenProcessorConfig) -> torch.Tensor:
    """uint8 patches ``[N, 3*K]`` (channel-major columns) -> normalised float32 ``[N, 3*K]``.

    ``"pil"``: ``((x / 255) - mean) / std``. The float32 division ``x / 255`` equals HF's
    ``float32(float64(x) * (1/255))`` for every uint8 ``x`` (checked in the tests).
    ``"torch"``: ``(x - 255*mean) / (255*std)``, the fused form of HF's torchvision backend.
    Always on CPU: CUDA turns a division by a scalar into a multiplication by its inverse,
    which rounds differently.
    """
    num_rows = patches.shape[0]
    values = patches.reshape(num_rows, NUM_CHANNELS, -1).to(device="cpu", dtype=torch.float32)
    mean = torch.tensor(config.image_mean, dtype=torch.float32).view(1, NUM_CHANNELS, 1)
    std = torch.tensor(config.image_std, dtype=torch.float32).view(1, NUM_CHANNELS, 1)
    if config.resize_backend == "pil":
        values.div_(255.0).sub_(mean).div_(std)
    else:
        values.sub_(mean * 255.0).div_(std * 255.0)
    return values.reshape(num_rows, -1)


def preprocess_video(frames: ArrayLike, config: QwenProcessorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """One video: uint8 ``[T, H, W, 3]`` -> (pixel values ``[t*h*w, 1176]`` float32, grid_thw ``[3]`` int64)."""
    frames = _as_uint8_frames(frames, "frames")
    resized_height, resized_width = smart_resize(
        frames.shape[1], frames.shape[2], config.factor, config.min_pixels, config.max_pixels
    )
    frames = resize_frames(frames, resized_height, resized_width, config.resize_backend)
    patches, grid_thw = patchify_frames(frames, config.patch_size, config.temporal_patch_size, config.merge_size)
    return normalize_patches(patches, config), torch.tensor(grid_thw, dtype=torch.int64)


def _preprocess_many(items: Sequence[torch.Tensor], config: QwenProcessorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if len(items) == 0:
        raise ValueError("nothing to preprocess: pass at least one video or image")
    outputs = [preprocess_video(item, config) for item in items]
    pixel_values = torch.cat([pixels for pixels, _ in outputs], dim=0)
    grid_thw = torch.stack([grid for _, grid in outputs], dim=0)
    return pixel_values, grid_thw


def preprocess_videos(
    videos: Sequence[ArrayLike], config: QwenProcessorConfig | None = None
) -> dict[str, torch.Tensor]:
    """Videos -> HF's video inputs of Qwen2.5-VL.

    Args:
        videos: each uint8 RGB ``[T_i, H_i, W_i, 3]``.
        config: settings; ``None`` means ``QwenProcessorConfig.for_video()``.

    Returns:
        ``{"pixel_values_videos": [sum_i t_i*h_i*w_i, 1176] float32,
        "video_grid_thw": [num_videos, 3] int64}``, videos concatenated in order.
    """
    config = QwenProcessorConfig.for_video() if config is None else config
    pixel_values, grid_thw = _preprocess_many(list(videos), config)
    return {"pixel_values_videos": pixel_values, "video_grid_thw": grid_thw}


def preprocess_images(
    images: Sequence[ArrayLike], config: QwenProcessorConfig | None = None
) -> dict[str, torch.Tensor]:
    """Images -> HF's image inputs of Qwen2.5-VL (each a one-frame video, grid t = 1).

    Args:
        images: each uint8 RGB ``[H_i, W_i, 3]``.
        config: settings; ``None`` means ``QwenProcessorConfig()`` (the checkpoints' image settings).

    Returns:
        ``{"pixel_values": [sum_i h_i*w_i, 1176] float32, "image_grid_thw": [num_images, 3] int64}``.
    """
    config = QwenProcessorConfig() if config is None else config
    frames = []
    for image in images:
        tensor = torch.from_numpy(np.asarray(image)) if not isinstance(image, torch.Tensor) else image
        if tensor.ndim != 3:
            raise ValueError(f"an image must have shape [H, W, 3], got {tuple(tensor.shape)}")
        frames.append(tensor.unsqueeze(0))
    pixel_values, grid_thw = _preprocess_many(frames, config)
    return {"pixel_values": pixel_values, "image_grid_thw": grid_thw}
