"""Decode attention over a KV cache: a Triton flash-decoding (split-KV) kernel, graph-safe, with a torch reference.

Runs on the decoding rank for every generated token: T new query rows `[T, Hq, D]` (T = 1..16)
attend to the first `length` rows of a cache `[C, Hkv, D]` of capacity C, and the result is
(out `[T, Hq, D]` in q's dtype, lse `[T, Hq]` float32, natural log of the scaled scores), the pair
that `spava.attention.backend` backends return, so a distributed cache merges shards by LSE.

`length` may be a 1-element int tensor on the device: it is then read by the kernels, never on the
host, and the grid and every buffer depend only on (C, T, Hq, Hkv, D, dtype, num_splits), so one call
can be captured in a CUDA graph and replayed while the length grows. Given `out`, `lse_out` and a
workspace (or a `DecodeAttention` that has already run these shapes), a call allocates nothing.

Kernel design (`spava_kernels.decode_kernels`): one program per (split, KV head) reads its share
of the keys once for the whole GQA group and all T rows, then a small kernel merges the splits by
LSE, so a step reads |K| + |V| once. `python -m spava_kernels.decode_attention` times it against
torch's SDPA (`spava_kernels.decode_bench`). Measured on an H100 (7B shapes, one query row, bf16, a
594K-row cache, CUDA-graph replays): 18.3 / 40.4 / 117.0 / 401.0 us at lengths 8K / 32K / 148K / 594K,
i.e. 916 / 1662 / 2591 / 3034 GB/s (a copy of the same bytes: 1730 / 2485 / 2909 / 3022 GB/s; cuDNN SDPA:
19.5 / 41.4 / 117.9 / 403-418 us). Outside a graph a call also costs ~50-120 us of host time (checks and
two Triton launches), which dominates short caches: capture the decode step. Imports torch only;
Triton on first Triton call.
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import math
import numbers
from dataclasses import dataclass
from typing import Optional, Union

import torch

from spava_kernels import decode_reference

IMPLS = ("auto", "triton", "torch")
HEAD_DIMS = (64, 80, 96, 128)
MAX_GROUP_ROWS = 128  # query rows one program holds (GQA group x T): one tl.dot tile
MAX_SPLITS = 1024
# num_splits heuristic: this many programs per SM over all KV heads (H100, 7B shapes: 1 and 2 time alike,
# 4 up to 8% slower), and at most one split per this many keys of capacity (a split's partial is 4 * D
# bytes per query row; 256 keys of K and V are 128 KiB at D 128 in bf16)
PROGRAMS_PER_SM = 2
MIN_KEYS_PER_SPLIT = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
Length = Union[int, torch.Tensor]


def default_num_splits(capacity: int, num_kv_heads: int, device: torch.device) -> int:
    """Splits per KV head from the capacity (never the length) and the device's SM count.

    num_kv_heads * num_splits >= PROGRAMS_PER_SM * SMs programs (H100: 132 SMs, 4 KV heads -> 66
    splits), but no more splits than C / MIN_KEYS_PER_SPLIT, so each keeps >= 256 keys at full
    capacity. CPU (reference, interpreter): 8 programs. The kernels divide [0, length) evenly over
    min(num_splits, cdiv(length, MIN_SPLIT_KEYS)) of these at run time, so short caches still spread."""
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    wanted = -(-PROGRAMS_PER_SM * num_sms // max(num_kv_heads, 1))
    return max(1, min(wanted, capacity // MIN_KEYS_PER_SPLIT, MAX_SPLITS))


@dataclass(frozen=True)
class DecodeWorkspace:
    """The split partials of one call shape: partial_out `[T * Hq, num_splits, D]` (normalised
    outputs) and partial_lse `[T * Hq, num_splits]` (log2-sum-exps), float32. Reusable across calls
    and lengths; bigger buffers fit smaller calls."""

    partial_out: torch.Tensor
    partial_lse: torch.Tensor

    @classmethod
    def empty(cls, num_q: int, num_heads: int, dim: int, num_splits: int, device: torch.device) -> "DecodeWorkspace":
        rows = num_q * num_heads
        return cls(torch.empty(rows, num_splits, dim, dtype=torch.float32, device=device),
                   torch.empty(rows, num_splits, dtype=torch.float32, device=device))

    def fits(self, num_q: int, num_heads: int, dim: int, num_splits: int, device: torch.device) -> bool:
        rows, splits, width = self.partial_out.shape
        return (self.partial_out.device == device and rows >= num_q * num_heads and splits >= num_splits
                and width == dim and tuple(self.partial_lse.shape[:1]) == (rows,)
                and self.partial_lse.shape[1] >= num_splits and self.partial_out.stride(-1) == 1
                and self.partial_lse.stride(-1) == 1)


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, length: Length, *,
    scale: Optional[float] = None, is_causal: bool = True, num_splits: Optional[int] = None,
    out: Optional[torch.Tensor] = None, lse_out: Optional[torch.Tensor] = None, impl: str = "auto",
    workspace: Optional[DecodeWorkspace] = None, config=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of new rows q `[T, Hq, D]` over the first `length` rows of a KV cache.

    Args:
        q: `[T, Hq, D]`, fp16 / bf16 / fp32 (float64: the reference only), any row/head strides.
        k_cache, v_cache: `[C, Hkv, D]` of q's dtype, any row/head strides, contiguous last dim;
            Hq % Hkv == 0 (query head h reads KV head h // (Hq / Hkv)). D in {64, 80, 96, 128}.
        length: valid rows, an int in [0, C] or a 1-element int32/int64 tensor on q's device (read on the
            device, clamped to [0, C]; no host sync, CUDA-graph safe).
        scale: softmax scale (default D ** -0.5).
        is_causal: the T rows are the last T of the `length` keys (row t sees keys j < length - T + 1 + t);
            False: every row sees all `length` keys. A row that sees no key gets lse -inf and zeros.
        num_splits: key splits per KV head (default `default_num_splits(C, Hkv, device)`).
        out: `[T, Hq, D]` destination (any float dtype, contiguous last dim); None: new, q's dtype.
        lse_out: `[T, Hq]` float32 destination; None: new.
        impl: "auto" (Triton on CUDA, else the reference), "triton" (also Triton's interpreter on CPU
            under TRITON_INTERPRET=1) or "torch" (`spava_kernels.decode_reference`).
        workspace: split partials (`DecodeWorkspace`) to use; None: allocated for this call.
        config: a `decode_kernels.Config` launch choice (None: its default).

    Returns:
        (out, lse). With the reference and float64 q, lse is float64.
    """
    is_tensor_length = _check(q, k_cache, v_cache, length, is_causal, out, lse_out)
    if not _use_triton(impl, q, k_cache, v_cache):
        return decode_reference.decode_attention(q, k_cache, v_cache, length, scale=scale, is_causal=is_causal,
                                                 out=out, lse_out=lse_out)
    if q.dtype == torch.float64:
        raise ValueError("the Triton kernel computes in float32: float64 inputs take impl='torch'")
    num_q, num_heads, dim = q.shape
    if q.stride(-1) != 1:
        q = q.contiguous()
    if num_splits is None:
        num_splits = default_num_splits(k_cache.shape[0], k_cache.shape[1], q.device)
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be in [1, {MAX_SPLITS}]; got {num_splits}")
    if workspace is None:
        workspace = DecodeWorkspace.empty(num_q, num_heads, dim, num_splits, q.device)
    elif not workspace.fits(num_q, num_heads, dim, num_splits, q.device):
        raise ValueError(f"workspace {tuple(workspace.partial_out.shape)} on {workspace.partial_out.device} does "
                         f"not fit T * Hq = {num_q * num_heads} rows, {num_splits} splits, D = {dim} on {q.device}")
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if lse_out is None:
        lse_out = torch.empty(num_q, num_heads, dtype=torch.float32, device=q.device)
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    kernels = importlib.import_module("spava_kernels.decode_kernels")
    kernels.launch(q, k_cache, v_cache, length if is_tensor_length else None, 0 if is_tensor_length else int(length),
                   scale, is_causal, num_splits, out, lse_out, workspace.partial_out, workspace.partial_lse,
                   config=config)
    return out, lse_out


class DecodeAttention:
    """`decode_attention` with its workspaces kept on this object (the caller owns it, e.g. one per decoder):
    one per (device, T, Hq, D, num_splits), the least recently used dropped past `max_workspaces`.

    Under CUDA-graph capture, run the shapes once before capturing (as for any warm-up), so the
    captured call finds its workspace here and allocates nothing."""

    def __init__(self, max_workspaces: int = 8):
        if max_workspaces < 1:
            raise ValueError(f"max_workspaces must be >= 1; got {max_workspaces}")
        self.max_workspaces = max_workspaces
        self._workspaces: collections.OrderedDict[tuple, DecodeWorkspace] = collections.OrderedDict()

    def workspace(self, q: torch.Tensor, num_splits: int) -> DecodeWorkspace:
        """The workspace for q's shape and `num_splits` (allocated on first use)."""
        num_q, num_heads, dim = q.shape
        key = (q.device, num_q, num_heads, dim, num_splits)
        found = self._workspaces.get(key)
        if found is None:
            found = DecodeWorkspace.empty(num_q, num_heads, dim, num_splits, q.device)
            self._workspaces[key] = found
            while len(self._workspaces) > self.max_workspaces:
                self._workspaces.popitem(last=False)
        self._workspaces.move_to_end(key)
        return found

    def __call__(
        self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, length: Length, *,
        scale: Optional[float] = None, is_causal: bool = True, num_splits: Optional[int] = None,
        out: Optional[torch.Tensor] = None, lse_out: Optional[torch.Tensor] = None, impl: str = "auto", config=None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`decode_attention` (same arguments) with this object's workspace for the shape."""
        workspace = None
        if _use_triton(impl, q, k_cache, v_cache):
            if num_splits is None:
                num_splits = default_num_splits(k_cache.shape[0], k_cache.shape[1], q.device)
            workspace = self.workspace(q, num_splits)
        return decode_attention(q, k_cache, v_cache, length, scale=scale, is_causal=is_causal, num_splits=num_splits,
                                out=out, lse_out=lse_out, impl=impl, workspace=workspace, config=config)


def _fits_kernel(q: torch.Tensor, k_cache: torch.Tensor) -> str:
    """Why the Triton kernel cannot take these shapes ("" when it can)."""
    num_q, num_heads, dim = q.shape
    if dim not in HEAD_DIMS:
        return f"head_dim must be one of {HEAD_DIMS}; got {dim}"
    if (num_heads // k_cache.shape[1]) * num_q > MAX_GROUP_ROWS:
        return (f"(Hq / Hkv) * T = {(num_heads // k_cache.shape[1]) * num_q} query rows per KV head; at most "
                f"{MAX_GROUP_ROWS}: call with fewer new tokens at a time")
    return ""


def _use_triton(impl: str, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Triton for impl "triton" (shapes it takes, else ValueError), or "auto" with CUDA tensors (not
    float64), shapes it takes and Triton importable; otherwise the reference."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    problem = _fits_kernel(q, k_cache)
    if impl != "auto":
        if impl == "triton" and problem:
            raise ValueError(problem)
        return impl == "triton"
    if problem or not all(t.is_cuda and t.dtype != torch.float64 for t in (q, k_cache, v_cache)):
        return False
    return importlib.util.find_spec("triton") is not None


def _check(q, k_cache, v_cache, length, is_causal, out, lse_out) -> bool:
    """Validate shapes, dtypes and length (metadata only: no device reads); True for a tensor length."""
    if q.dim() != 3 or k_cache.dim() != 3 or v_cache.shape != k_cache.shape or q.shape[2] != k_cache.shape[2]:
        raise ValueError(f"want q [T, Hq, D] and k_cache, v_cache [C, Hkv, D]; got {tuple(q.shape)}, "
                         f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    num_q, num_heads, dim = q.shape
    capacity, num_kv_heads, _ = k_cache.shape
    if num_q < 1 or num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"need T >= 1 and Hq ({num_heads}) a multiple of Hkv ({num_kv_heads})")
    is_float64 = q.dtype == torch.float64
    if (q.dtype not in _DTYPES and not is_float64) or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"q, k_cache, v_cache must share one of {_DTYPES} (or float64); got {q.dtype}, "
                         f"{k_cache.dtype}, {v_cache.dtype}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache need a contiguous last dim (a strided cache would be copied every step)")
    if out is not None and (out.shape != q.shape or out.stride(-1) != 1 or out.device != q.device):
        raise ValueError(f"out must be {tuple(q.shape)} on {q.device} with a contiguous last dim; got "
                         f"{tuple(out.shape)} on {out.device}")
    if lse_out is not None and (lse_out.shape != q.shape[:2] or lse_out.device != q.device
                                or lse_out.dtype != decode_reference.accumulator_dtype(q.dtype)):
        raise ValueError(f"lse_out must be {tuple(q.shape[:2])} {decode_reference.accumulator_dtype(q.dtype)} on "
                         f"{q.device}; got {tuple(lse_out.shape)} {lse_out.dtype} on {lse_out.device}")
    if isinstance(length, torch.Tensor):
        if length.numel() != 1 or length.dtype not in (torch.int32, torch.int64) or length.device != q.device:
            raise ValueError(f"a tensor length must be one int32/int64 element on {q.device}; got "
                             f"{tuple(length.shape)} {length.dtype} on {length.device}")
        return True
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or not 0 <= length <= capacity:
        raise ValueError(f"length must be an int in [0, {capacity}] (the capacity) or a tensor; got {length!r}")
    if is_causal and length < num_q:
        raise ValueError(f"causal decoding needs at least as many keys ({length}) as new rows ({num_q})")
    return False


if __name__ == "__main__":
    from spava_kernels.decode_bench import main

    main()
