"""Entry points: the Triton kernel where it can run, else the torch reference (same semantics).

Every function takes `impl`: "auto" (Triton when every tensor is on CUDA and Triton is importable,
and for merges when no tensor is float64, whose reference accumulates in float64), "triton" (force
it: also how tests run the kernels on CPU tensors under TRITON_INTERPRET=1) or "torch".
Triton modules are imported on first use only, so importing this module stays light.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Optional

import torch

from spava_kernels import reference

IMPLS = ("auto", "triton", "torch")


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
