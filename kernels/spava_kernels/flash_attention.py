"""Triton flash attention over a few long packed sequences, with head_dim split into exact pieces.

Qwen2.5-VL's full-attention ViT blocks attend within each temporal grid (18,564 patches per grid
at 1440p) with head_dim 80. cuDNN runs head_dim 80 on a 128-wide tile (the kernel name says
`..._64x128x128`): 37.5% of its tensor-core work multiplies padding. tl.dot needs power-of-two
tiles too, so here the head dim is split into a power of two plus a remainder, D = DA + DB
(80 = 64 + 16), and both matmuls are done piecewise with no padding:

    S  = Q[:, :DA] K[:, :DA]^T + Q[:, DA:] K[:, DA:]^T          (two dots into one accumulator)
    O[:, :DA] += P V[:, :DA];   O[:, DA:] += P V[:, DA:]          (two accumulators)

The rest is flash attention (online softmax in float32 with exp2, P cast to v's dtype for the
second dot, one division at the end). One program owns BLOCK_M query rows of one (sequence, head)
and loops over all key tiles of that sequence; the full tiles run unmasked and the last partial
tile, if any, is masked once. Programs are numbered query-block-minor, so the programs resident
at one time share the same sequence and head and its K/V stays in L2.

Loads go through TMA tensor descriptors (`USE_TMA`, sm_90+, when the split is exact and strides
allow) or through plain pointers otherwise (any GPU, Triton's interpreter). Rows a TMA tile reads
beyond a sequence belong to the next sequence (or are zero past the buffer): their scores get
-inf and their P is zero, so they add nothing; output rows are stored with a mask.

`python -m spava_kernels.flash_attention` times the `SWEEP_CONFIGS` against cuDNN on a CUDA device.
Importing this module imports Triton; `spava_kernels.dispatch` imports it only when needed.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class Config(NamedTuple):
    """Launch choices: query rows and key rows per tile, warps, software-pipeline stages, TMA loads."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    use_tma: bool = False


def default_config(dtype: torch.dtype, is_cuda_sm90: bool) -> Config:
    """Chosen by `python -m spava_kernels.flash_attention` on an H200 (bf16, D 80, L 18,564): 128 x 64
    tiles, one warpgroup, 3 stages, TMA (412 TFLOP/s vs cuDNN's 377; 128 x 128 with 8 warps: 302).
    fp32 tiles are twice the bytes: smaller ones fit in shared memory."""
    if dtype == torch.float32:
        return Config(64, 32, 4, 1)
    return Config(128, 64, 4, 3, is_cuda_sm90)


def split_head_dim(dim: int) -> tuple[int, int, int]:
    """head_dim -> (DA, DB, BLOCK_DB): DA the largest power of two <= dim (at least 16), DB the rest,
    BLOCK_DB the tile width holding it (0 when DB is 0, else a power of two >= 16, masked beyond DB)."""
    dim_a = max(16, 1 << (dim.bit_length() - 1))
    dim_b = max(0, dim - dim_a)
    return dim_a, dim_b, 0 if dim_b == 0 else max(16, triton.next_power_of_2(dim_b))


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # Triton 3.6's interpreter multiplies bf16 bit patterns as integers: dot in fp32 there
        result = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        result = tl.dot(a, b, acc, input_precision=PRECISION)
    return result


@triton.jit
def _load_tile(desc, ptrs, row, col, row_ok, col_ok, USE_TMA: tl.constexpr, MASKED: tl.constexpr):
    """One [rows, cols] tile: TMA at (row, col), or pointers (masked rows/cols when MASKED)."""
    if USE_TMA:
        tile = desc.load([row, col])
    elif MASKED:
        tile = tl.load(ptrs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    else:
        tile = tl.load(ptrs, mask=col_ok[None, :], other=0.0)
    return tile


@triton.jit
def _update(q_a, q_b, k_a, k_b, v_a, v_b, acc_a, acc_b, m_i, l_i, qk_scale, key_bias,
            HAS_B: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Fold one key tile into the running (acc_a, acc_b, row max m_i, row sum l_i); scores in log2 units."""
    scores = _dot(q_a, tl.trans(k_a), None, PRECISION, UPCAST)
    if HAS_B:
        scores = _dot(q_b, tl.trans(k_b), scores, PRECISION, UPCAST)
    if MASKED:
        scores = scores + key_bias
    m_new = tl.maximum(m_i, tl.max(scores, 1) * qk_scale)
    probs = tl.exp2(scores * qk_scale - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(probs, 1)
    probs = probs.to(v_a.dtype)
    acc_a = _dot(probs, v_a, acc_a * alpha[:, None], PRECISION, UPCAST)
    if HAS_B:
        acc_b = _dot(probs, v_b, acc_b * alpha[:, None], PRECISION, UPCAST)
    return acc_a, acc_b, m_new, l_i


@triton.jit
def _load_kv(ka_desc, kb_desc, va_desc, vb_desc, ka_ptrs, kb_ptrs, va_ptrs, vb_ptrs, first_n, start, k_st, v_st,
             col_head, rows_n, length_kv, a_ok, b_ok, DA: tl.constexpr, HAS_B: tl.constexpr,
             USE_TMA: tl.constexpr, MASKED: tl.constexpr):
    """The key tile starting `first_n` rows into the sequence: k and v, both head-dim pieces."""
    row = start + first_n
    step = first_n.to(tl.int64)
    n_ok = first_n + rows_n < length_kv
    k_a = _load_tile(ka_desc, ka_ptrs + step * k_st, row, col_head, n_ok, a_ok, USE_TMA, MASKED)
    v_a = _load_tile(va_desc, va_ptrs + step * v_st, row, col_head, n_ok, a_ok, USE_TMA, MASKED)
    k_b = _load_tile(kb_desc, kb_ptrs + step * k_st, row, col_head + DA, n_ok, b_ok, USE_TMA and HAS_B, MASKED)
    v_b = _load_tile(vb_desc, vb_ptrs + step * v_st, row, col_head + DA, n_ok, b_ok, USE_TMA and HAS_B, MASKED)
    return k_a, k_b, v_a, v_b


@triton.jit
def _seq_bounds(cu_ptr, seq):
    """(start, length) of sequence `seq` as true scalars (Triton's interpreter gives a scalar load
    shape [1], which a loop bound cannot take; a reduction yields a scalar in both modes)."""
    pair = tl.load(cu_ptr + seq + tl.arange(0, 2))
    start = tl.sum(tl.where(tl.arange(0, 2) == 0, pair, 0))
    stop = tl.sum(tl.where(tl.arange(0, 2) == 1, pair, 0))
    return start, stop - start


@triton.jit
def _flash_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, cu_ptr,
    qa_desc, qb_desc, ka_desc, kb_desc, va_desc, vb_desc,
    num_heads, qk_scale,
    q_st, q_sh, k_st, k_sh, v_st, v_sh, o_st, o_sh,
    HEAD_DIM: tl.constexpr, DA: tl.constexpr, BLOCK_DB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STAGES: tl.constexpr, USE_TMA: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, INTERPRET: tl.constexpr, MAX_TILES: tl.constexpr,
):
    HAS_B: tl.constexpr = BLOCK_DB > 0
    DB_TILE: tl.constexpr = BLOCK_DB if BLOCK_DB > 0 else 16  # a dummy tile when there is no remainder
    m_block = tl.program_id(0)
    seq = tl.program_id(1) // num_heads
    head = (tl.program_id(1) % num_heads).to(tl.int64)  # int64: head * head stride may be big
    start, length = _seq_bounds(cu_ptr, seq)
    first_m = m_block * BLOCK_M
    length_kv = length * (first_m < length).to(tl.int32)  # query blocks past the end do nothing
    rows_m = first_m + tl.arange(0, BLOCK_M)
    m_ok = rows_m < length
    token_m = (start + rows_m).to(tl.int64)  # int64: token * row stride passes 2**31 in big buffers
    cols_a = tl.arange(0, DA)
    cols_b = DA + tl.arange(0, DB_TILE)
    a_ok = cols_a < HEAD_DIM
    b_ok = cols_b < HEAD_DIM
    col_head = (head * HEAD_DIM).to(tl.int32)  # TMA column of this head in the [T, H * D] view
    q_rows = (token_m * q_st + head * q_sh)[:, None]
    q_a = _load_tile(qa_desc, q_ptr + q_rows + cols_a[None, :], start + first_m, col_head, m_ok, a_ok,
                     USE_TMA, True)
    q_b = _load_tile(qb_desc, q_ptr + q_rows + cols_b[None, :], start + first_m, col_head + DA, m_ok, b_ok,
                     USE_TMA and HAS_B, True)
    acc_a = tl.zeros([BLOCK_M, DA], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_M, DB_TILE], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    rows_n = tl.arange(0, BLOCK_N)
    token_n = (start + rows_n).to(tl.int64)
    k_rows = (token_n * k_st + head * k_sh)[:, None]
    v_rows = (token_n * v_st + head * v_sh)[:, None]
    ka_ptrs, kb_ptrs = k_ptr + k_rows + cols_a[None, :], k_ptr + k_rows + cols_b[None, :]
    va_ptrs, vb_ptrs = v_ptr + v_rows + cols_a[None, :], v_ptr + v_rows + cols_b[None, :]
    num_full = length_kv // BLOCK_N
    if INTERPRET:  # the interpreter's scalars cannot bound a loop (numpy 2.4): mask all tiles up to a constexpr bound
        num_full, first_masked, stop = 0, 0, MAX_TILES
    else:  # the full tiles unmasked, then the partial last tile (0 or 1 iteration) masked
        first_masked, stop = num_full, tl.cdiv(length_kv, BLOCK_N)
    for tile in tl.range(0, num_full, num_stages=STAGES):
        k_a, k_b, v_a, v_b = _load_kv(ka_desc, kb_desc, va_desc, vb_desc, ka_ptrs, kb_ptrs, va_ptrs, vb_ptrs,
                                      tile * BLOCK_N, start, k_st, v_st, col_head, rows_n, length_kv, a_ok, b_ok,
                                      DA, HAS_B, USE_TMA, False)
        acc_a, acc_b, m_i, l_i = _update(q_a, q_b, k_a, k_b, v_a, v_b, acc_a, acc_b, m_i, l_i, qk_scale, 0.0,
                                         HAS_B, False, PRECISION, UPCAST)
    for tile in tl.range(first_masked, stop):
        first_n = tile * BLOCK_N
        key_bias = tl.where(first_n + rows_n < length_kv, 0.0, float("-inf"))[None, :]
        k_a, k_b, v_a, v_b = _load_kv(ka_desc, kb_desc, va_desc, vb_desc, ka_ptrs, kb_ptrs, va_ptrs, vb_ptrs,
                                      first_n, start, k_st, v_st, col_head, rows_n, length_kv, a_ok, b_ok,
                                      DA, HAS_B, USE_TMA, True)
        acc_a, acc_b, m_i, l_i = _update(q_a, q_b, k_a, k_b, v_a, v_b, acc_a, acc_b, m_i, l_i, qk_scale,
                                         key_bias, HAS_B, True, PRECISION, UPCAST)
    inv = 1.0 / l_i
    o_rows = (token_m * o_st + head * o_sh)[:, None]
    out_ty = o_ptr.dtype.element_ty
    tl.store(o_ptr + o_rows + cols_a[None, :], (acc_a * inv[:, None]).to(out_ty), mask=m_ok[:, None] & a_ok[None, :])
    if HAS_B:
        tl.store(o_ptr + o_rows + cols_b[None, :], (acc_b * inv[:, None]).to(out_ty),
                 mask=m_ok[:, None] & b_ok[None, :])


def _check(q, k, v, cu_seqlens, out) -> None:
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"want q, k, v [T, H, D] of one shape; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one of {_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not 16 <= q.shape[2] <= 256:
        raise ValueError(f"head_dim must be in [16, 256]; got {q.shape[2]}")
    if cu_seqlens.dim() != 1 or cu_seqlens.device != q.device:
        raise ValueError("cu_seqlens must be a 1-D tensor on q's device")
    if out is not None and (out.shape != v.shape or out.stride(-1) != 1):
        raise ValueError(f"out must be {tuple(v.shape)} with a contiguous last dim; got {tuple(out.shape)}")


def _tma_views(q, k, v, config: Config, dim_a: int, block_db: int, dim_b: int):
    """Six TMA descriptors (q, k, v x the two head-dim pieces) over `[T, H * D]` views, or Nones when
    TMA is not asked for or cannot read these tensors (inexact split, unaligned strides or bases)."""
    if not config.use_tma or (dim_b and block_db != dim_b):
        return (None,) * 6
    from triton.tools.tensor_descriptor import TensorDescriptor

    descs = []
    for x, block in ((q, config.block_m), (k, config.block_n), (v, config.block_n)):
        num_tokens, num_heads, dim = x.shape
        if x.stride(1) != dim or (x.stride(0) * x.element_size()) % 16 or x.data_ptr() % 16:
            return (None,) * 6
        for width in (dim_a, block_db or 16):
            descs.append(TensorDescriptor(x, [num_tokens, num_heads * dim], [x.stride(0), 1], [block, width]))
    qa, qb, ka, kb, va, vb = descs
    return qa, qb, ka, kb, va, vb


def _set_tma_allocator() -> None:
    # Triton asks for a scratch allocator when kernels build descriptors; host descriptors need none,
    # but setting one is harmless and keeps newer Triton versions happy.
    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, device="cuda", dtype=torch.int8)

    triton.set_allocator(alloc)


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
    scale: Optional[float] = None, out: Optional[torch.Tensor] = None, config: Optional[Config] = None,
) -> torch.Tensor:
    """Non-causal attention within each packed sequence (any length), one launch for all of them.

    Args:
        q, k, v: `[T, H, D]`; fp16, bf16 or fp32 (one dtype), any row and head strides (e.g. views of
            a packed `[T, 3, H, D]` qkv); a non-contiguous last dim is copied.
        cu_seqlens: `[S + 1]` int32 (int64 is converted) on q's device: 0, ..., T, non-decreasing.
        max_seqlen: the longest sequence (sizes the launch grid; longer sequences would be cut).
        scale: softmax scale (default `D ** -0.5`).
        out: `[T, H, D]` destination (any dtype, row/head strides, contiguous last dim); None: new.
        config: launch choices (`Config`), default `default_config`.

    Returns:
        out `[T, H, D]`. Rows that no sequence covers are left as they were (uninitialised when new).
    """
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    _check(q, k, v, cu_seqlens, out)
    num_tokens, num_heads, dim = q.shape
    if out is None:
        out = torch.empty(v.shape, dtype=q.dtype, device=q.device)
    num_seqs = cu_seqlens.numel() - 1
    if num_tokens == 0 or num_heads == 0 or num_seqs <= 0 or max_seqlen <= 0:
        return out
    cu = cu_seqlens if cu_seqlens.dtype == torch.int32 else cu_seqlens.to(torch.int32)
    is_sm90 = q.is_cuda and torch.cuda.get_device_capability(q.device)[0] >= 9
    config = config or default_config(q.dtype, is_sm90)
    if config.use_tma and not (is_sm90 and q.dtype != torch.float32):
        config = config._replace(use_tma=False)
    dim_a, dim_b, block_db = split_head_dim(dim)
    descs = _tma_views(q, k, v, config, dim_a, block_db, dim_b)
    use_tma = descs[0] is not None
    if use_tma:
        _set_tma_allocator()
    scale = dim ** -0.5 if scale is None else scale
    grid = (triton.cdiv(max_seqlen, config.block_m), num_seqs * num_heads)
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    _flash_kernel[grid](
        q, k, v, out, cu, *descs,
        num_heads, scale * math.log2(math.e),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1),
        HEAD_DIM=dim, DA=dim_a, BLOCK_DB=block_db, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        STAGES=config.num_stages, USE_TMA=use_tma,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32: no TF32; fp16/bf16 ignore it
        UPCAST=q.dtype == torch.bfloat16 and interpret, INTERPRET=interpret,
        MAX_TILES=triton.cdiv(max_seqlen, config.block_n) if interpret else 0,  # no respecialising when compiled
        num_warps=config.num_warps,
    )
    return out


SWEEP_CONFIGS = (Config(128, 64, 4, 3, True), Config(128, 64, 4, 2, True), Config(128, 64, 4, 4, True),
                 Config(128, 32, 4, 3, True), Config(128, 32, 4, 4, True), Config(256, 64, 8, 2, True),
                 Config(256, 64, 8, 3, True), Config(256, 32, 8, 3, True), Config(128, 128, 4, 2, True),
                 Config(128, 64, 4, 3, False))


def sweep(num_seqs: int, length: int, num_heads: int, dim: int, kernels) -> None:
    """Time `kernels` (name, fn(q, k, v, cu_seqlens, max_seqlen) -> out) against cuDNN's SDPA on ViT
    full-attention shapes (CUDA, bf16): q, k contiguous `[T, H, D]` (as rotary writes them), v a view of a
    packed qkv `[T, 3, H, D]`. The diff column is against cuDNN."""
    from spava_kernels.sweep import batched_sdpa, time_cases

    device, dtype = torch.device("cuda"), torch.bfloat16
    qkv = torch.randn(num_seqs * length, 3, num_heads, dim, device=device, dtype=dtype)
    q, k, v = qkv[:, 0].contiguous(), qkv[:, 1].contiguous(), qkv[:, 2]
    cu_seqlens = (torch.arange(num_seqs + 1, device=device) * length).to(torch.int32)
    flops = 4 * num_seqs * length * length * num_heads * dim
    print(f"{num_seqs} sequences x {length} tokens, H={num_heads}, D={dim}, bf16: {flops / 1e12:.2f} TFLOP; "
          f"{torch.cuda.get_device_name(device)}")
    def cudnn():
        return batched_sdpa(q, k, v, num_seqs, "cudnn")

    cases = [("cudnn sdpa", cudnn)]
    cases += [(name, lambda fn=fn: fn(q, k, v, cu_seqlens, length)) for name, fn in kernels]
    time_cases(cases, cudnn(), flops, "TFLOP/s", rep_ms=300)


if __name__ == "__main__":
    import functools

    from spava_kernels.sweep import attention_sweep_args

    sweep(*attention_sweep_args("Sweep launch configs of the Triton flash attention kernel"),
          [(f"triton {tuple(c)}", functools.partial(flash_attention, config=c)) for c in SWEEP_CONFIGS])
