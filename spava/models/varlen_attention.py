"""Packed variable-length (block-diagonal, non-causal) attention without a Python loop over sequences.

Vision towers such as Qwen2.5-VL's pack thousands of short sequences (8x8-patch windows) or a few
long ones (one temporal grid each) into one `[T, H, D]` tensor described by `cu_seqlens`. HF's
non-flash path runs one attention call per sequence, which is launch-bound. Here:

* with flash-attn importable (CUDA, fp16/bf16) one `flash_attn_varlen_func` call does everything;
* otherwise the sequences are grouped BY LENGTH (almost all windows have the same size, every
  temporal grid of one video has the same size) and each group runs as ONE batched
  `scaled_dot_product_attention` over `[B, H, L, D]` (on GPU: cuDNN / flash / efficient kernels).
  A group whose sequences sit back to back is a free view; any other group is gathered and
  scattered with a precomputed index. The only Python loop is over distinct lengths (a handful).

`plan_varlen_groups` does the grouping once per layout so that every layer reuses it.

Backend "triton" (first in `backends`, CUDA fp16/bf16): one Triton launch over ALL sequences
straight from `cu_seqlens` (no grouping, no gather): `spava_kernels.window_attention` when every
sequence has <= 128 tokens (the ViT's 64-patch windows, where batched SDPA runs well below the copy
rate), else `spava_kernels.flash_attention` (long sequences, head_dim split into exact power-of-two
pieces instead of cuDNN's padding of 80 to 128).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Kernels index batch with a 16-bit grid dimension in places; bigger groups run as several calls.
MAX_SEQS_PER_CALL = 16384

_BACKENDS = {
    "cudnn": "CUDNN_ATTENTION",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}


@dataclass(frozen=True)
class VarlenGroup:
    """`num_seqs` sequences of `length` tokens each.

    If `index` is None they tile rows `[start, start + num_seqs * length)` back to back (read as a
    view, no copy); otherwise `index` `[num_seqs * length]` (long) lists their rows, sequence by
    sequence, and `start` is -1.
    """

    length: int
    num_seqs: int
    start: int
    index: torch.Tensor | None


@dataclass(frozen=True)
class VarlenGroups:
    """The grouping of one `cu_seqlens` layout; build with `plan_varlen_groups`, reuse per layer.

    cu_seqlens: `[S + 1]` int32 on the attention device (what flash-attn wants).
    """

    groups: tuple[VarlenGroup, ...]
    num_tokens: int
    max_seqlen: int
    cu_seqlens: torch.Tensor

    @property
    def is_single_view(self) -> bool:
        """One group that covers every row in order: the output needs no scatter."""
        return len(self.groups) == 1 and self.groups[0].index is None and self.groups[0].start == 0 \
            and self.groups[0].num_seqs * self.groups[0].length == self.num_tokens


def plan_varlen_groups(cu_seqlens: torch.Tensor | Sequence[int],
                       device: torch.device | str | None = None) -> VarlenGroups:
    """Group the sequences of `cu_seqlens` `[S + 1]` (0, ..., T) by length; empty ones are dropped.

    Index tensors are placed on `device` (default: the device of `cu_seqlens`).
    """
    cu = torch.as_tensor(cu_seqlens)
    device = torch.device(device) if device is not None else cu.device
    cu = cu.to("cpu", torch.int64)
    if cu.ndim != 1 or cu.numel() < 1 or int(cu[0]) != 0:
        raise ValueError("cu_seqlens must be a 1-D sequence that starts at 0")
    lengths, starts = cu[1:] - cu[:-1], cu[:-1]
    if bool((lengths < 0).any()):
        raise ValueError("cu_seqlens must be non-decreasing")
    groups = []
    for length in torch.unique(lengths[lengths > 0]).flip(0).tolist():
        seq_starts = starts[lengths == length]
        num_seqs = seq_starts.numel()
        first = int(seq_starts[0])
        is_contiguous = bool(torch.equal(seq_starts, first + length * torch.arange(num_seqs)))
        if is_contiguous:
            groups.append(VarlenGroup(length, num_seqs, first, None))
        else:
            index = (seq_starts[:, None] + torch.arange(length)[None, :]).reshape(-1)
            groups.append(VarlenGroup(length, num_seqs, -1, index.to(device)))
    max_seqlen = int(lengths.max()) if lengths.numel() else 0
    return VarlenGroups(tuple(groups), int(cu[-1]), max_seqlen, cu.to(device, torch.int32))


def sdpa_backend_context(backends: Sequence[str] | None):
    """`sdpa_kernel` restricted to (and prioritised in the order of) `backends` names; None: no change."""
    if not backends:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    unknown = [name for name in backends if name not in _BACKENDS]
    if unknown:
        raise ValueError(f"unknown SDPA backends {unknown}; choose from {sorted(_BACKENDS)}")
    chosen = [getattr(SDPBackend, _BACKENDS[name]) for name in backends]
    return sdpa_kernel(chosen, set_priority=True)


# Longest sequence the Triton window kernel holds in one tile (spava_kernels.window_attention.MAX_SEQLEN).
TRITON_MAX_SEQLEN = 128


@functools.lru_cache(maxsize=None)
def triton_windows_available() -> bool:
    """Whether the Triton window kernel can be imported (Triton and `spava_kernels`, e.g. the repo's
    kernels/ on PYTHONPATH); neither is imported here."""
    return all(importlib.util.find_spec(name) is not None for name in ("triton", "spava_kernels"))


def triton_kernel_for(q: torch.Tensor, v: torch.Tensor, backends: Sequence[str] | None,
                      max_seqlen: int) -> Callable | None:
    """The `spava_kernels.dispatch` kernel for these sequences when `backends` starts with "triton"
    and it suits (CUDA fp16/bf16; windows <= 128 tokens with head_dim <= 128, or longer sequences with
    q, k, v of one head_dim in [16, 256]), else None (the SDPA/flash path). fp32 stays with SDPA: the
    kernels' exact fp32 dots run without tensor cores."""
    if not backends or backends[0] != "triton" or not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return None
    if not triton_windows_available():
        return None
    if max_seqlen <= TRITON_MAX_SEQLEN:
        if max(q.shape[2], v.shape[2]) > 128:
            return None
        from spava_kernels.dispatch import window_attention  # lazy: imports Triton on first use

        return window_attention
    if v.shape[2] != q.shape[2] or not 16 <= q.shape[2] <= 256:
        return None
    from spava_kernels.dispatch import flash_attention

    return flash_attention


def _flash_varlen_fn() -> Callable | None:
    """flash-attn's varlen kernel if the package imports, else None."""
    if importlib.util.find_spec("flash_attn") is None:
        return None
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:  # installed but built against another torch/CUDA: use the SDPA path
        return None
    return flash_attn_varlen_func


def _is_flash_usable(q: torch.Tensor, use_flash: bool | None) -> Callable | None:
    if use_flash is False or not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        if use_flash:
            raise ValueError("use_flash=True needs CUDA fp16/bf16 tensors")
        return None
    fn = _flash_varlen_fn()
    if fn is None and use_flash:
        raise ImportError("use_flash=True but flash_attn is not importable")
    return fn


def _attend_batch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_seqs: int, length: int,
                  scale: float | None) -> torch.Tensor:
    """SDPA over `num_seqs` back-to-back sequences: q/k/v `[B*L, H, D]` (any row stride) -> `[B*L, H, Dv]`."""
    def as_batch(x: torch.Tensor) -> torch.Tensor:
        return x.view(num_seqs, length, x.shape[1], x.shape[2]).transpose(1, 2)

    out = F.scaled_dot_product_attention(as_batch(q), as_batch(k), as_batch(v), scale=scale)
    # [B, H, L, Dv] -> [B*L, H, Dv]; free when the kernel wrote a BLHD layout (flash does).
    return out.transpose(1, 2).reshape(num_seqs * length, out.shape[1], out.shape[3])


def _run_group(q, k, v, out, group: VarlenGroup, scale, max_seqs_per_call: int) -> None:
    """Attention for one length group, in batches of at most `max_seqs_per_call` sequences."""
    length = group.length
    for first in range(0, group.num_seqs, max_seqs_per_call):
        count = min(max_seqs_per_call, group.num_seqs - first)
        lo, hi = first * length, (first + count) * length
        if group.index is None:
            rows = slice(group.start + lo, group.start + hi)
            out[rows] = _attend_batch(q[rows], k[rows], v[rows], count, length, scale)
        else:
            index = group.index[lo:hi]
            picked = [x.index_select(0, index) for x in (q, k, v)]
            out.index_copy_(0, index, _attend_batch(*picked, count, length, scale))


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: VarlenGroups, *,
                      scale: float | None = None, backends: Sequence[str] | None = None,
                      max_seqs_per_call: int = MAX_SEQS_PER_CALL) -> torch.Tensor:
    """Block-diagonal attention by length groups: q/k `[T, H, D]`, v `[T, H, Dv]` -> `[T, H, Dv]`.

    Rows not covered by any sequence (only possible with a short `cu_seqlens`) are rejected.
    """
    num_tokens, num_heads, _ = q.shape
    if groups.num_tokens != num_tokens:
        raise ValueError(f"cu_seqlens covers {groups.num_tokens} tokens but q has {num_tokens}")
    with sdpa_backend_context(backends):
        if groups.is_single_view and groups.groups[0].num_seqs <= max_seqs_per_call:
            group = groups.groups[0]
            return _attend_batch(q, k, v, group.num_seqs, group.length, scale)
        out = q.new_empty(num_tokens, num_heads, v.shape[2])
        for group in groups.groups:
            _run_group(q, k, v, out, group, scale, max_seqs_per_call)
    return out


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens: torch.Tensor | Sequence[int] | None, *, scale: float | None = None,
                     groups: VarlenGroups | None = None, backends: Sequence[str] | None = None,
                     use_flash: bool | None = None, kernel_config=None) -> torch.Tensor:
    """Non-causal attention within each packed sequence: q/k `[T, H, D]`, v `[T, H, Dv]` -> `[T, H, Dv]`.

    Args:
        cu_seqlens: `[S + 1]` cumulative sequence lengths (0, ..., T); may be None when `groups` is given.
        scale: softmax scale (default `D ** -0.5`).
        groups: a precomputed `plan_varlen_groups(cu_seqlens)`, reused across layers.
        backends: SDPA backend names in priority order (`cudnn`, `flash`, `efficient`, `math`); a
            leading "triton" runs a Triton kernel (see the module docstring),
            and is skipped wherever it cannot run.
        use_flash: flash-attn varlen kernel: None = when importable and usable, False = never.
        kernel_config: launch `Config` of the Triton kernel that runs (None: the kernel's default).
    """
    if groups is None:
        if cu_seqlens is None:
            raise ValueError("pass cu_seqlens or groups")
        groups = plan_varlen_groups(cu_seqlens, device=q.device)
    # Triton first when asked for: one launch for all sequences, straight from cu_seqlens.
    triton_fn = triton_kernel_for(q, v, backends, groups.max_seqlen)
    if triton_fn is not None:
        if groups.num_tokens != q.shape[0]:
            raise ValueError(f"cu_seqlens covers {groups.num_tokens} tokens but q has {q.shape[0]}")
        return triton_fn(q, k, v, groups.cu_seqlens.to(q.device), groups.max_seqlen, scale, impl="triton",
                         config=kernel_config)
    if backends:  # "triton" is not an SDPA backend: whatever follows it is the fallback order
        backends = [name for name in backends if name != "triton"]
    flash_fn = _is_flash_usable(q, use_flash)
    if flash_fn is not None:
        cu = groups.cu_seqlens.to(q.device)
        return flash_fn(q, k, v, cu, cu, groups.max_seqlen, groups.max_seqlen, softmax_scale=scale, causal=False)
    return grouped_attention(q, k, v, groups, scale=scale, backends=backends)
