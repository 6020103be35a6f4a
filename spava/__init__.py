"""spava: fast long-video understanding with large multimodal models on several GPUs.

Importing this package is light: it does not import torch, Triton, flash-attn, deepspeed or PyAV.
Public names are resolved lazily on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved on first attribute access (PEP 562).
_LAZY_EXPORTS = {
    "Pipeline": "spava.runtime.pipeline",
    "RunResult": "spava.runtime.pipeline",
    "load_config": "spava.config",
}

__all__ = ["__version__", *_LAZY_EXPORTS]


def __getattr__(name: str) -> Any:
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'spava' has no attribute {name!r}")
    return getattr(importlib.import_module(module_name), name)
