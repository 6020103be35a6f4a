"""Attention kernels that return (out, lse): the only place spava calls an attention kernel.

Every backend computes, for q `[Sq, Hq, D]` and k, v `[Sk, Hkv, D]` (GQA: query head h reads KV head
h // (Hq / Hkv), as HF's `repeat_kv`):

    out `[Sq, Hq, D]` in q.dtype,  lse `[Sq, Hq]` in float32 (float64 for float64 inputs)

with `is_causal` meaning *bottom-right* alignment: query row i sees keys j <= i + (Sk - Sq). That is
the convention of flash-attn >= 2.1 and what passing blocks and KV caches need (queries are the last
Sq positions of the keys). Backends whose kernel aligns top-left run the rectangle before the diagonal
as a second, non-causal call and LSE-merge the two.

Backends, chosen by name or "auto":
  flash_attn   flash-attn package when installed (CUDA; native GQA and bottom-right causal)
  torch_cuda   cuDNN / flash attention through torch's aten ops (CUDA; they return the LSE)
  torch_cpu    aten._scaled_dot_product_flash_attention_for_cpu (CPU; float32/bf16/float64)
  math         plain matmul + softmax in float32/float64: the reference
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from spava.attention.merge import accumulator_dtype, merge_two_into

KernelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, float], tuple[torch.Tensor, torch.Tensor]]


def expand_kv_heads(kv: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`[S, Hkv, D]` -> `[S, num_heads, D]`, each KV head repeated for its query-head group."""
    num_kv_heads = kv.shape[1]
    if num_kv_heads == num_heads:
        return kv
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads cannot share {num_kv_heads} KV heads evenly")
    return kv.repeat_interleave(num_heads // num_kv_heads, dim=1)


def _to_bhsd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(0, 1).unsqueeze(0)


def _math_kernel(q, k, v, is_causal, scale):
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    k = expand_kv_heads(k, q.shape[1]).to(acc)
    v = expand_kv_heads(v, q.shape[1]).to(acc)
    scores = torch.einsum("qhd,khd->hqk", q.to(acc), k) * scale
    if is_causal:
        num_q, num_k = q.shape[0], k.shape[0]
        keep = torch.ones(num_q, num_k, dtype=torch.bool, device=q.device).tril(num_k - num_q)
        scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("hqk,khd->qhd", torch.exp(scores - lse.unsqueeze(-1)), v)
    return out.to(q.dtype), lse.transpose(0, 1).contiguous()


def _torch_cpu_kernel(q, k, v, is_causal, scale):
    k = expand_kv_heads(k, q.shape[1])
    v = expand_kv_heads(v, q.shape[1])
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        _to_bhsd(q), _to_bhsd(k), _to_bhsd(v), 0.0, is_causal, scale=scale
    )
    return out[0].transpose(0, 1), lse[0].transpose(0, 1)


def _cudnn(qb, kb, vb, is_causal, scale):
    return torch.ops.aten._scaled_dot_product_cudnn_attention(qb, kb, vb, None, True, 0.0, is_causal, False,
                                                              scale=scale)


def _aten_flash(qb, kb, vb, is_causal, scale):
    return torch.ops.aten._scaled_dot_product_flash_attention(qb, kb, vb, 0.0, is_causal, False, scale=scale)


def _aten_efficient(qb, kb, vb, is_causal, scale):
    """Memory-efficient attention (float32 too); its LSE rows are padded, cut to the queries."""
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(qb, kb, vb, None, True, 0.0, is_causal,
                                                                       scale=scale)[:2]
    return out, lse[..., : qb.shape[2]]


class TorchCudaKernel:
    """cuDNN attention through torch (fastest dense kernel on Hopper), else torch's FA2; for float32
    (which cuDNN and FA2 do not compute) torch's memory-efficient kernel.

    Tries cuDNN with native GQA first; if this torch/cuDNN rejects unequal head counts, KV heads are
    expanded. The working mode is remembered per backend instance (no global state).
    """

    MODES = ("cudnn_gqa", "cudnn", "flash")
    HALF_DTYPES = (torch.float16, torch.bfloat16)

    def __init__(self):
        self.mode: str | None = None

    def _call(self, mode, q, k, v, is_causal, scale):
        if mode != "cudnn_gqa":
            k, v = expand_kv_heads(k, q.shape[1]), expand_kv_heads(v, q.shape[1])
        run = {"flash": _aten_flash, "efficient": _aten_efficient}.get(mode, _cudnn)
        return run(_to_bhsd(q), _to_bhsd(k), _to_bhsd(v), is_causal, scale)

    def __call__(self, q, k, v, is_causal, scale):
        if q.dtype not in self.HALF_DTYPES:
            out, lse = self._call("efficient", q, k, v, is_causal, scale)
            return out[0].transpose(0, 1), lse.reshape(q.shape[1], q.shape[0]).transpose(0, 1)
        modes = (self.mode,) if self.mode else self.MODES
        for mode in modes:
            try:
                result = self._call(mode, q, k, v, is_causal, scale)
            except RuntimeError:
                if mode == self.MODES[-1] or self.mode:
                    raise
                continue
            self.mode = mode
            out, lse = result[0], result[1]
            return out[0].transpose(0, 1), lse.reshape(q.shape[1], q.shape[0]).transpose(0, 1)
        raise RuntimeError("no CUDA attention kernel accepted these inputs")


def _flash_attn_kernel(q, k, v, is_causal, scale):
    from flash_attn import flash_attn_func

    out, lse, _ = flash_attn_func(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), softmax_scale=scale, causal=is_causal,
        return_attn_probs=True,
    )
    return out[0], lse[0].transpose(0, 1)


@dataclass(frozen=True)
class AttentionBackend:
    """A named kernel returning (out, lse) with bottom-right causal semantics (see module doc)."""

    name: str
    kernel: KernelFn
    is_bottom_right_native: bool

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, is_causal: bool, scale: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of q `[Sq, Hq, D]` over k, v `[Sk, Hkv, D]` -> (out `[Sq,Hq,D]`, lse `[Sq,Hq]`)."""
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        num_q, num_k = q.shape[0], k.shape[0]
        if is_causal and num_k < num_q:
            raise ValueError(f"causal attention needs at least as many keys ({num_k}) as queries ({num_q})")
        if not is_causal or num_q == num_k or self.is_bottom_right_native:
            out, lse = self.kernel(q, k, v, is_causal, scale)
            return out, lse.float() if lse.dtype != torch.float64 else lse
        prefix = num_k - num_q
        out = torch.empty_like(q)
        lse = merge_two_into(out, *self.kernel(q, k[:prefix], v[:prefix], False, scale),
                             *self.kernel(q, k[prefix:], v[prefix:], True, scale))
        return out, lse


_KERNELS = {
    "flash_attn": (lambda: _flash_attn_kernel, True),
    "torch_cuda": (TorchCudaKernel, False),
    "torch_cpu": (lambda: _torch_cpu_kernel, False),
    "math": (lambda: _math_kernel, False),
}


def has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def get_backend(name: str = "auto", device: torch.device | str | None = None) -> AttentionBackend:
    """Resolve a backend by name; "auto" picks the fastest one available for `device`."""
    if name == "auto":
        is_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
        if is_cuda:
            name = "flash_attn" if has_flash_attn() else "torch_cuda"
        else:
            name = "torch_cpu"
    if name not in _KERNELS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of auto, {', '.join(_KERNELS)}")
    if name == "flash_attn" and not has_flash_attn():
        raise ValueError("attention backend 'flash_attn' needs `pip install flash-attn`; or set backend: auto")
    make_kernel, is_native = _KERNELS[name]
    return AttentionBackend(name=name, kernel=make_kernel(), is_bottom_right_native=is_native)


def attend_pieces(
    backend: AttentionBackend,
    q: torch.Tensor,
    pieces: list[tuple[torch.Tensor, torch.Tensor, bool]],
    scale: float | None = None,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows q `[Sq, Hq, D]` attending to the union of several key pieces, merged by LSE.

    Args:
        pieces: (k `[Sk, Hkv, D]`, v, is_causal) per piece; empty pieces are skipped. The first
            non-empty piece must give every row at least one key (it starts the merge).
        out: optional destination `[Sq, Hq, D]` (e.g. a row slice of the layer output): the last
            merge writes straight into it, in its dtype.
    Returns:
        (out: `out` when given, else a float32/64 accumulator `[Sq, Hq, D]`; lse `[Sq, Hq]`).
    Each merge is one fused kernel on CUDA (`merge_two_into`); partials stay in the kernel's dtype.
    """
    pieces = [piece for piece in pieces if piece[0].shape[0] > 0]
    if not pieces:
        raise ValueError("attend_pieces needs at least one non-empty key piece")
    k, v, is_causal = pieces[0]
    acc, lse = backend.attend(q, k, v, is_causal=is_causal, scale=scale)
    accumulator = None
    for index, (k, v, is_causal) in enumerate(pieces[1:], start=2):
        out_b, lse_b = backend.attend(q, k, v, is_causal=is_causal, scale=scale)
        if index == len(pieces) and out is not None:
            dest = out
        else:  # intermediate results stay in float32 so that only the last write rounds
            if accumulator is None:
                accumulator = torch.empty(q.shape, dtype=accumulator_dtype(q.dtype), device=q.device)
            dest = accumulator
        lse = merge_two_into(dest, acc, lse, out_b, lse_b)
        acc = dest
    if out is None:
        return acc.to(accumulator_dtype(q.dtype)), lse
    if acc is not out:
        out.copy_(acc)
    return out, lse
