"""Pixel preprocessing on the model rank's device: uint8 frames -> a vision tower's pixel rows.

The Qwen2-VL family's steps (see `spava.models.vision_spec`): resize, patchify, normalise. Videos
are resized like the reference video path (qwen-vl-utils / HF's torchvision video processor: bicubic
with antialias on tensors; uint8 in, uint8 out on the CPU, float then rounded on CUDA as torchvision
does there) and normalised as `(x - 255*mean) / (255*std)`. Images arrive resized already (the video
worker uses Pillow, as HF's image processor does) and are normalised as `(x / 255 - mean) / std`.
Everything runs on the frames' device, so a GPU rank does no per-pixel work on the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spava.models.qwen2_5_vl.processing import patchify_frames
from spava.models.vision_spec import NUM_CHANNELS, VisionSpec


def preprocess_qwen_frames(spec: VisionSpec, frames: torch.Tensor, resized_hw: tuple[int, int], kind: str = "video",
                           dtype: torch.dtype | None = None) -> torch.Tensor:
    """uint8 frames `[T, H, W, 3]` -> pixel rows `[ceil(T/tp)*h*w, patch_dim]` in `dtype` (float32)."""
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != NUM_CHANNELS:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    frames = resize_frames(frames, *resized_hw)
    patches, _ = patchify_frames(frames, spec.patch_size, spec.temporal_patch_size, spec.merge_size)
    return normalize_rows(patches, spec.image_mean, spec.image_std, is_image=kind == "image",
                          dtype=dtype or torch.float32)


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic antialiased resize of uint8 `[T, H, W, 3]` -> uint8 `[T, height, width, 3]`, same device.

    CPU: torch's uint8 kernel (what torchvision runs for uint8 tensors on the CPU: the reference
    video path). Elsewhere (CUDA has no uint8 antialias kernel) the same two separable passes in
    float32, horizontal then vertical, each rounded and clamped to [0, 255] as the uint8 kernel stores
    its intermediate: within one or two levels of the CPU result on under 1% of pixels (the uint8
    kernel's weights are fixed point). One float pass without the intermediate clamp would differ by
    up to ~20 levels next to sharp edges, where bicubic overshoots.
    """
    if tuple(frames.shape[1:3]) == (height, width):
        return frames
    if frames.device.type != "cpu":
        return resize_frames_two_pass(frames, height, width)
    resized = F.interpolate(frames.permute(0, 3, 1, 2), size=(height, width), mode="bicubic", antialias=True,
                            align_corners=False)
    return resized.permute(0, 2, 3, 1)


def resize_frames_two_pass(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`resize_frames` for devices without a uint8 antialias kernel (see there), on any device."""
    values = frames.permute(0, 3, 1, 2).float()
    for size in ((values.shape[2], width), (height, width)):  # horizontal pass, then vertical
        if tuple(values.shape[2:]) != size:
            values = F.interpolate(values, size=size, mode="bicubic", antialias=True,
                                   align_corners=False).round_().clamp_(0, 255)
    return values.to(torch.uint8).permute(0, 2, 3, 1)


def normalize_rows(patches: torch.Tensor, mean, std, *, is_image: bool, dtype: torch.dtype) -> torch.Tensor:
    """uint8 rows `[N, 3*K]` (channel-major columns) -> normalised rows in `dtype`, on their device.

    Images: `(x / 255 - mean) / std` (HF's image processor); videos: `(x - 255*mean) / (255*std)`
    (the fused form of HF's torchvision video processor). Arithmetic in float32.
    """
    num_rows = patches.shape[0]
    values = patches.reshape(num_rows, NUM_CHANNELS, -1).to(torch.float32)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=values.device).view(1, NUM_CHANNELS, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=values.device).view(1, NUM_CHANNELS, 1)
    if is_image:
        values = values.div_(255.0).sub_(mean_t).div_(std_t)
    else:
        values = values.sub_(mean_t * 255.0).div_(std_t * 255.0)
    return values.reshape(num_rows, -1).to(dtype)
