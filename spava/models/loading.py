"""Build the model adapter a rank needs from `ModelConfig` (local checkpoint or random weights)."""

from __future__ import annotations

import torch

from spava.models.family import get_family
from spava.models.smollm2_weights import find_smollm2_gguf

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def resolve_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu' devices")
    return torch.device(device)


def resolve_text_model_dir(model_config) -> str:
    """Local HF directory of a text-family model; a GGUF is converted once into a cache directory."""
    if model_config.path is not None:
        return model_config.path
    import os

    from pathlib import Path

    from spava.models.text_lm import convert_gguf, is_cache_of

    gguf = model_config.gguf
    if gguf == "smollm2":
        gguf = find_smollm2_gguf()
    cache_dir = Path(os.path.expanduser("~/.cache/spava/gguf")) / Path(gguf).stem
    if not is_cache_of(cache_dir, Path(gguf)):
        convert_gguf(Path(gguf), cache_dir, torch_dtype(model_config.dtype))
    return str(cache_dir)


def build_adapter(model_config, parts: tuple[str, ...], device: str):
    """The model adapter of this rank (its family's, with only `parts` kept) on `device`."""
    return get_family(model_config).build(parts, device)
