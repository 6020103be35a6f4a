"""Fused elementwise pieces of a decoder layer: RMSNorm (alone or after the residual add), rotary
embedding, SwiGLU.

HF's modules run them eagerly: RMSNorm alone is six kernels over float32 copies of `[S, hidden]`,
RoPE five over `[S, H, D]`, SwiGLU two over `[S, intermediate]`. On a 4xH200 profile of Qwen2.5-VL-7B
(37K rows per rank) these eager kernels took about 0.2 s of a 2.1 s time to first token. Here each
is one function with HF's arithmetic (RMSNorm in float32, then the weight in the input dtype;
rotate-half RoPE; silu(gate) * up), compiled by `torch.compile` into a single kernel on CUDA, and
plain eager torch elsewhere (CPU tests compare against HF bit for bit on that path).

Only module types whose forward is known are fused (`RMS_NORM_TYPES`, `SWIGLU_MLP_TYPES`); any other
module is called as is, so custom layers keep working.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger("spava.models")

# RMSNorm classes whose forward is: float32, x * rsqrt(mean(x^2) + eps), cast back, times weight.
RMS_NORM_TYPES = frozenset({"Qwen2_5_VLRMSNorm", "Qwen2RMSNorm", "LlamaRMSNorm", "Qwen3RMSNorm", "MistralRMSNorm",
                            "Qwen3VLTextRMSNorm"})
# MLP classes whose forward is: down_proj(act_fn(gate_proj(x)) * up_proj(x)).
SWIGLU_MLP_TYPES = frozenset({"Qwen2MLP", "Qwen2_5_VLMLP", "LlamaMLP", "Qwen3MLP", "MistralMLP", "Qwen3VLTextMLP"})


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF RMSNorm: x `[S, C]` -> `[S, C]` (statistics in float32, weight applied in x.dtype)."""
    hidden = x.to(torch.float32)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * hidden.to(x.dtype)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """The residual add and the next RMSNorm: (x + delta, rms_norm(x + delta)), both `[S, C]`."""
    total = x + delta
    return total, rms_norm(total, weight, eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x `[S, H, D]`, cos/sin `[S, D]` -> rotated x (HF's rotate-half convention)."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """RoPE of q `[S, Hq, D]` and k `[S, Hkv, D]` in one call (one fused kernel when compiled)."""
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's elementwise part: silu(gate) * up, `[S, I]`."""
    return F.silu(gate) * up


def is_compile_default(device: torch.device) -> bool:
    """Compile on CUDA when Triton is importable, unless SPAVA_COMPILE=0."""
    if os.environ.get("SPAVA_COMPILE", "1") == "0":
        return False
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


def _dynamic_rows(fn: Callable) -> Callable:
    """Compile fn with the leading (row) dimension of every tensor argument dynamic, the rest static
    (static widths and head counts keep the generated kernels as fast as hand-written ones).

    If compiling fails (an unsupported toolchain, say), a warning is logged once and the eager
    function is used from then on: slower, never wrong. A failure while a CUDA graph is being
    captured is raised instead: the capture is retried after an eager step.
    """
    compiled = torch.compile(fn, dynamic=None)
    state = {"failed": False}  # per wrapper, not module level

    def call(*args):
        if state["failed"]:
            return fn(*args)
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.dim() > 1 and arg.shape[0] > 1:
                torch._dynamo.maybe_mark_dynamic(arg, 0)
        try:
            return compiled(*args)
        except Exception as error:  # noqa: BLE001 - compilation problems must not fail a request
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                # compiling a new shape inside a CUDA graph capture is not allowed; the capture fails,
                # the caller runs the step eagerly (which compiles it) and captures again
                raise
            state["failed"] = True
            logger.warning("torch.compile of %s failed (%s: %s); running it eagerly",
                           fn.__name__, type(error).__name__, error)
            return fn(*args)

    return call


class FusedOps:
    """The decoder's elementwise functions, compiled or eager (one instance per decoder)."""

    def __init__(self, is_compiled: bool):
        self.is_compiled = is_compiled
        wrap = _dynamic_rows if is_compiled else (lambda fn: fn)
        self._rms_norm = wrap(rms_norm)
        self._add_rms_norm = wrap(add_rms_norm)
        self._rope_qk = wrap(rope_qk)
        self._silu_mul = wrap(silu_mul)

    def norm(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """module(x) for an RMSNorm module; fused when its type is known."""
        if type(module).__name__ in RMS_NORM_TYPES:
            return self._rms_norm(x, module.weight, module.variance_epsilon)
        return module(x)

    def add_norm(self, module: nn.Module, x: torch.Tensor, delta: torch.Tensor):
        """(x + delta, module(x + delta)) for an RMSNorm module, one fused kernel when its type is known."""
        if type(module).__name__ in RMS_NORM_TYPES:
            return self._add_rms_norm(x, delta, module.weight, module.variance_epsilon)
        total = x + delta
        return total, module(total)

    def rope_qk(self, q, k, cos, sin):
        return self._rope_qk(q, k, cos, sin)

    def silu_mul(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return self._silu_mul(gate, up)

    def mlp(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """module(x) for an MLP module; SwiGLU's elementwise part fused when its type is known."""
        if type(module).__name__ in SWIGLU_MLP_TYPES and is_silu(module.act_fn):
            return module.down_proj(self._silu_mul(module.gate_proj(x), module.up_proj(x)))
        return module(x)


def is_silu(act: nn.Module) -> bool:
    """The activation module is SiLU (torch's or transformers')."""
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"
