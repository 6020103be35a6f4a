"""Entry points: the Triton kernel where it can run, else the torch reference (same semantics).

Every function takes `impl`: "auto" (Triton when every tensor is on CUDA and Triton is importable,
and for merges when no tensor is float64, whose reference accumulates in float64), "triton" (force
it: also how tests run the kernels on CPU tensors under TRITON_INTERPRET=1) or "torch".
Triton modules are imported on first use only, so importing this module stays light.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import os
import re
from typing import Optional

import torch

from spava_kernels import reference
# torch-only module (its Triton kernels load on first use): the decode-attention API itself
from spava_kernels.decode_attention import DecodeAttention, DecodeWorkspace, decode_attention  # noqa: F401

IMPLS = ("auto", "triton", "torch")
# Whether flash_attention(config=None) takes the Gluon sm_90 kernel on H100 / H200 (else the Triton kernel):
# 504 vs 419 TFLOP/s on an H200 at the 7B ViT's shapes (docs/benchmarks.md, "Kernels").
SM90_FLASH_IS_DEFAULT = True
# Whether swiglu_gemm(config=None) takes the Gluon sm_90 GEMM (else the Triton one): 649 vs 582 TFLOP/s there.
SM90_SWIGLU_IS_DEFAULT = True
# The Gluon API the sm_90 kernels are written against (gl.warp_specialize's list form) is Triton 3.6's.
MIN_GLUON_TRITON = (3, 6)


@functools.lru_cache(maxsize=None)
def has_triton() -> bool:
    """Whether Triton is importable (cached: the answer cannot change within a process)."""
    return importlib.util.find_spec("triton") is not None


def use_triton(impl: str, *tensors: torch.Tensor, allow_float64: bool = True) -> bool:
    """Resolve `impl` for these tensors: True for the Triton kernel, False for the torch reference."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl == "triton"
    if not has_triton() or not all(t.is_cuda for t in tensors):
        return False
    return allow_float64 or all(t.dtype != torch.float64 for t in tensors)


def _kernels(name: str):
    """The Triton module `spava_kernels.<name>` (imports Triton)."""
    return importlib.import_module(f"spava_kernels.{name}")


def merge_two(
    out_a: torch.Tensor,
    lse_a: torch.Tensor,
    out_b: torch.Tensor,
    lse_b: torch.Tensor,
    out: Optional[torch.Tensor] = None,
    lse_out: Optional[torch.Tensor] = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partials (out_a `[S,H,D]`, lse_a `[S,H]`) and (out_b, lse_b) into `out` (any float
    dtype and strides, may alias out_a; None: new, out_a's dtype) and `lse_out` (float32).
    Empty pieces (lse -inf) yield the other piece. Returns (out, lse_out)."""
    tensors = [t for t in (out_a, lse_a, out_b, lse_b, out, lse_out) if t is not None]
    if use_triton(impl, *tensors, allow_float64=False):
        return _kernels("merge").merge_two(out_a, lse_a, out_b, lse_b, out, lse_out)
    return reference.merge_two(out_a, lse_a, out_b, lse_b, out, lse_out)


def merge_into_(
    acc_out: torch.Tensor, acc_lse: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor, impl: str = "auto"
) -> None:
    """Fold (out_b `[S,H,D]`, lse_b `[S,H]`) into the accumulator (acc_out, acc_lse) in place,
    like `spava.attention.merge.merge_partials_` (plus the empty-piece rule)."""
    merge_two(acc_out, acc_lse, out_b, lse_b, out=acc_out, lse_out=acc_lse, impl=impl)


def score_and_pool(q_query: torch.Tensor, k: torch.Tensor, window: int, impl: str = "auto") -> torch.Tensor:
    """Query-aware scores of keys k `[S, Hkv, D]` against q_query `[Lq, Hq, D]`, max-pooled over
    `window` within this range -> `[S_out, Hkv]` float32 (S_out = S, or S + 1 for even windows)."""
    if use_triton(impl, q_query, k):
        return _kernels("scoring").score_and_pool(q_query, k, window)
    return reference.score_and_pool(q_query, k, window)


def select_topk(pooled: torch.Tensor, num_select: int) -> torch.Tensor:
    """`[S, Hkv]` -> `[n, Hkv]` int64 indices of the n largest per head (torch.topk, unsorted)."""
    return reference.select_topk(pooled, num_select)


def pack_selected(
    k: torch.Tensor, v: torch.Tensor, index: torch.Tensor, out_k: torch.Tensor, out_v: torch.Tensor,
    impl: str = "auto",
) -> None:
    """out_k[i, h] = k[index[i, h], h] and out_v likewise, rows i < n of the `[slot_len, Hkv, D]`
    buffers; k, v `[S, Hkv, D]`, index `[n, Hkv]`."""
    if use_triton(impl, k, v, index, out_k, out_v):
        _kernels("pack").pack_selected(k, v, index, out_k, out_v)
    else:
        reference.pack_selected(k, v, index, out_k, out_v)


def select_into(
    scores: torch.Tensor, num_select: int, k: torch.Tensor, v: torch.Tensor, out_k: torch.Tensor,
    out_v: torch.Tensor, impl: str = "auto",
) -> None:
    """Drop-in for `spava.attention.scoring.select_into`: top-`num_select` rows per KV head of
    `scores` `[S, Hkv]`, K/V rows packed into out_k/out_v `[slot_len, Hkv, D]` rows [:num_select]."""
    if num_select == 0:
        return
    pack_selected(k, v, select_topk(scores, num_select), out_k, out_v, impl=impl)


def window_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
    max_seqlen: Optional[int] = None, scale: Optional[float] = None, out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Torch reference of `window_attention`, loop-free: every sequence padded to the longest one.

    q, k `[T, H, D]`, v `[T, H, Dv]`, cu_seqlens `[S + 1]` -> out `[T, H, Dv]` (q's dtype when new).
    Computed in float32 (float64 for float64 inputs) and rounded once, like SDPA's math backend.
    Memory is O(S * L * H * (D + L)): meant for tests, not for speed. `max_seqlen` is only checked.
    """
    num_tokens, num_heads, _ = q.shape
    if out is None:
        out = q.new_empty(num_tokens, num_heads, v.shape[2])
    cu = torch.as_tensor(cu_seqlens).to(q.device, torch.int64)
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]
    longest = int(lengths.max()) if lengths.numel() else 0
    if max_seqlen is not None and longest > max_seqlen:
        raise ValueError(f"a sequence of {longest} tokens is longer than max_seqlen={max_seqlen}")
    if longest == 0 or num_tokens == 0:
        return out
    positions = torch.arange(longest, device=q.device)
    valid = positions[None, :] < lengths[:, None]  # [S, L]
    rows = (starts[:, None] + positions).clamp(max=num_tokens - 1)  # padding rows read a real row
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qs, ks, vs = (x[rows].to(acc) for x in (q, k, v))  # [S, L, H, D]
    scale = q.shape[2] ** -0.5 if scale is None else scale
    scores = torch.einsum("sihd,sjhd->shij", qs, ks) * scale
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    # rows beyond a length are all -inf (NaN after softmax) but never written
    attended = torch.einsum("shij,sjhd->sihd", scores.softmax(-1), vs)
    out[rows[valid]] = attended[valid].to(out.dtype)
    return out


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
    scale: Optional[float] = None, out: Optional[torch.Tensor] = None, impl: str = "auto",
    rotary: Optional[tuple[torch.Tensor, torch.Tensor]] = None, config=None,
) -> torch.Tensor:
    """Non-causal attention within each packed short sequence (ViT windows): q, k `[T, H, D]`,
    v `[T, H, Dv]`, cu_seqlens `[S + 1]` int32 -> `[T, H, Dv]` (into `out` when given).
    rotary: (cos, sin) `[T, D/2]` float32: q and k are first rotated (`reference.rotate_half`; the
    kernel does it on load, saving a pass over q and k).

    Triton (`spava_kernels.window_attention`: every sequence <= 128 tokens, head_dim <= 128,
    fp16/bf16/fp32) or the torch reference (float64 always goes to the reference). config: the
    kernel's launch `Config` (None: its default)."""
    if use_triton(impl, q, k, v, cu_seqlens, allow_float64=False):
        return _kernels("window_attention").window_attention(q, k, v, cu_seqlens, max_seqlen, scale, out=out,
                                                             rotary=rotary, config=config)
    if rotary is not None:
        q, k = (reference.rotate_half(x, *rotary) for x in (q, k))
    return window_attention_reference(q, k, v, cu_seqlens, max_seqlen, scale, out=out)


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
    scale: Optional[float] = None, out: Optional[torch.Tensor] = None, impl: str = "auto", config=None,
) -> torch.Tensor:
    """Non-causal attention within each packed sequence of any length (the ViT's full-attention
    blocks: one sequence per temporal grid): q, k, v `[T, H, D]`, cu_seqlens `[S + 1]` int32 ->
    `[T, H, D]` (into `out` when given).

    With a `flash_attention_sm90.Config` (or by default when `SM90_FLASH_IS_DEFAULT`), on an H100 /
    H200 the Gluon kernel (`spava_kernels.flash_attention_sm90`: a TMA producer warp, softmax
    overlapped with the P V matmul; fp16/bf16, head_dim 2^a (+ 2^b)); otherwise the
    Triton kernel (`spava_kernels.flash_attention`: head_dim split into exact power-of-two pieces,
    16 <= D <= 256, fp16/bf16/fp32); or the torch reference (float64 always goes to the reference; it
    pads every sequence to the longest, O(S * L^2) memory: for tests). config: a launch `Config` of
    either kernel module, which also picks that kernel (None: the default kernel and its default)."""
    if not use_triton(impl, q, k, v, cu_seqlens, allow_float64=False):
        return window_attention_reference(q, k, v, cu_seqlens, max_seqlen, scale, out=out)
    triton_kernel = _kernels("flash_attention")
    wants_sm90 = config is not None and not isinstance(config, triton_kernel.Config)
    if ((wants_sm90 or (config is None and SM90_FLASH_IS_DEFAULT)) and _can_run_gluon(q)
            and _kernels("flash_attention_sm90").supports(q, k, v)):
        return _kernels("flash_attention_sm90").flash_attention_sm90(q, k, v, cu_seqlens, max_seqlen, scale, out=out,
                                                                     config=config)
    if wants_sm90:
        raise ValueError(f"config {config!r} is for the sm_90 kernel, which cannot run these inputs "
                         f"({q.dtype} {tuple(q.shape)} on {q.device}); pass a flash_attention.Config or None")
    return triton_kernel.flash_attention(q, k, v, cu_seqlens, max_seqlen, scale, out=out, config=config)


def _can_run_gluon(x: torch.Tensor) -> bool:
    """Whether a Gluon sm_90 kernel could run on x's device: compiled CUDA only (Gluon has no interpreter), an
    H100 / H200, and a Triton with the Gluon API the kernels use. Each kernel's `supports` checks the shapes."""
    if not x.is_cuda or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    return torch.cuda.get_device_capability(x.device) == (9, 0) and has_gluon()


@functools.lru_cache(maxsize=None)
def has_gluon() -> bool:
    """Whether Triton's Gluon dialect (`triton.experimental.gluon`) is importable in a Triton at least
    `MIN_GLUON_TRITON` (earlier ones have a different warp_specialize; cached)."""
    try:
        if importlib.util.find_spec("triton.experimental.gluon") is None:
            return False
    except ImportError:  # no triton, or no triton.experimental
        return False
    return gluon_version_ok(importlib.metadata.version("triton"))


def gluon_version_ok(version: str) -> bool:
    """Whether a Triton version string ("3.6.0", "3.7.0+git1234") is at least `MIN_GLUON_TRITON`."""
    numbers = [int(part) for part in re.findall(r"\d+", version)[:2]]
    return len(numbers) == 2 and tuple(numbers) >= MIN_GLUON_TRITON


def swiglu_gemm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], width: int,
                impl: str = "auto", config=None) -> torch.Tensor:
    """The ViT MLP's gate/up GEMM and SwiGLU in one: x `[N, K]`, weight `[2W, K]` (gate rows then up
    rows), bias `[2W]` or None -> silu(gate) * up `[N, W]`. Triton (`spava_kernels.swiglu_gemm`:
    CUDA sm_90, fp16/bf16, TMA-aligned K; with a `swiglu_gemm_sm90.Config`, or by default when
    `SM90_SWIGLU_IS_DEFAULT`, the Gluon kernel `spava_kernels.swiglu_gemm_sm90` on sm_90) or the torch
    reference (F.linear, then HF's SwiGLU)."""
    is_half = x.dtype in (torch.float16, torch.bfloat16)
    if use_triton(impl, x, weight) and (is_half or impl == "triton"):
        triton_kernel = _kernels("swiglu_gemm")
        wants_sm90 = config is not None and not isinstance(config, triton_kernel.Config)
        if wants_sm90 or (config is None and SM90_SWIGLU_IS_DEFAULT):
            if _can_run_gluon(x) and _kernels("swiglu_gemm_sm90").supports(x, weight, width):
                return _kernels("swiglu_gemm_sm90").swiglu_gemm_sm90(x, weight, bias, width, config=config)
            if wants_sm90:
                raise ValueError(f"config {config!r} is for the sm_90 Gluon kernel, which cannot run x {x.dtype} "
                                 f"{tuple(x.shape)} on {x.device} (width {width})")
        return triton_kernel.swiglu_gemm(x, weight, bias, width, config=config)
    return reference.swiglu_gemm(x, weight, bias, width)
