"""Base of the model adapters: what every adapter around an HF model (`self.hf`) exposes."""

from __future__ import annotations

import os

import torch


class HFAdapter:
    """Device and dtype of the wrapped HF model (`self.hf`, set by the subclass)."""

    hf: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def place_visual(self, hidden: torch.Tensor, local_rows: torch.Tensor, features: torch.Tensor) -> None:
        """Write the vision tower's features `[n, d]` into the local hidden states `[S, d]` at rows
        `local_rows` `[n]` (a family whose tower returns more than the embeddings overrides this)."""
        hidden.index_copy_(0, local_rows, features)

    def take_layer_additions(self) -> "dict[int, tuple[torch.Tensor, torch.Tensor]] | None":
        """Per-layer additions kept by `place_visual` since the last call, then forgotten:
        {layer i: (local rows `[n]`, values `[n, d]`)} added to layer i's output (DeepStack), or None."""
        return None


def load_local_hf(hf_class, path: str | os.PathLike, dtype: torch.dtype, hint: str) -> torch.nn.Module:
    """`hf_class.from_pretrained` on a local directory (config.json + *.safetensors) with sdpa
    attention; nothing is downloaded. `hint` ends the error for a folder without config.json."""
    path = os.fspath(path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"{path!r} is not a Hugging Face model directory (no config.json); {hint}")
    return hf_class.from_pretrained(path, dtype=dtype, local_files_only=True, attn_implementation="sdpa")


def random_hf(build, config, dtype: torch.dtype, device: str | torch.device, seed: int) -> torch.nn.Module:
    """`build(config, dtype=dtype)` with sdpa attention and seeded random weights, created on `device`
    (speed does not depend on weight values)."""
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        return build(config, dtype=dtype)


def hf_visual_inputs(config, device: torch.device, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                     grid_thw, kind: str = "video") -> dict:
    """Keyword arguments of an HF Qwen-VL-style forward / generate (batch 1) for the prompt `[N]` with one
    kind of visual item: ids, `mm_token_type_ids` (1 image, 2 video pad), pixel rows and `[K, 3]` grids."""
    ids = input_ids.reshape(1, -1).to(device)
    mm_types = torch.zeros_like(ids, dtype=torch.int32)
    mm_types[ids == config.image_token_id] = 1
    mm_types[ids == config.video_token_id] = 2
    kwargs = dict(input_ids=ids, mm_token_type_ids=mm_types)
    if pixel_values is not None:
        grid = torch.as_tensor(grid_thw, dtype=torch.long).reshape(-1, 3).to(device)
        names = ("pixel_values_videos", "video_grid_thw") if kind == "video" else ("pixel_values", "image_grid_thw")
        kwargs.update(zip(names, (pixel_values.to(device), grid)))
    return kwargs


def common_prefix_length(first: list[int], second: list[int]) -> int:
    """Number of leading token ids the two sequences share (where a context ends inside a prompt)."""
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length
