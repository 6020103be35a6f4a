"""Triton attention over many short packed sequences (the ViT's 8x8-patch windows) in one launch.

Qwen2.5-VL's window blocks attend within hundreds of thousands of windows of at most 64 patches
(16 heads, head_dim 80). Batched SDPA per window length runs at ~40% of the copy rate there; the
bound is reading q, k, v and writing the output once. Here one program owns one sequence and
`HEADS` of its heads, and for each head does the whole attention on chip:

    S = Q K^T [BLOCK, BLOCK]  ->  P = exp2((S - rowmax) * scale * log2 e)  ->  O = P V / rowsum(P)

* BLOCK (16..128) is the next power of two >= the longest sequence: one tile holds the whole
  sequence, so there is no online softmax and no loop over keys. Rows beyond the sequence's length
  are loaded as zeros under a mask (no memory traffic), their key columns get -inf before the
  softmax, and their output rows are not stored.
* BLOCK_D is head_dim rounded up to a power of two (80 -> 128) for tl.dot; the extra columns are
  masked too, so padding costs tensor-core work (60% more at D = 80) but no bytes.
* Programs are numbered sequence-major, head-group-minor: consecutive programs read neighbouring
  heads of the same rows, so each row's bytes are fetched by programs that run at the same time.
* HEADS > 1 loops over heads inside a program with `num_stages` software pipelining (cp.async), so
  the next head's loads are in flight while this head computes; `python -m
  spava_kernels.window_attention` times the `SWEEP_CONFIGS` against cuDNN on a CUDA device.
  Compiled offline for sm_90 (bf16, BLOCK 64, D 80, 16-divisible strides): the default (1 head,
  4 warps) uses 135 registers and 32 KiB of shared memory, wgmma, no spills; with rotary, 222.
* `rotary=(cos, sin)`: q and k are rotated as they are loaded (two halves per head, float32, HF's
  formula), which saves the ViT a separate rotary pass over q and k in every window block.

P is cast to v's dtype for the second tl.dot (as flash attention does) and the row sum is taken of
that cast P, so the weights of every output row sum to one exactly as used. fp32 inputs use IEEE
fp32 dots (exact but without tensor cores: slow, for tests and references). Importing this module
imports Triton; `spava_kernels.dispatch` imports it only when needed.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

MAX_SEQLEN = 128  # longest sequence one tile holds (BLOCK); longer ones need a flash-style kernel
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class Config(NamedTuple):
    """Launch choices: heads per program, warps, pipeline stages of the head loop."""

    heads: int
    num_warps: int
    num_stages: int


def default_config(block: int, is_rotary: bool = False) -> Config:
    """One head per program, 4 warps (sm_90, bf16, BLOCK 64, D 80: 135 registers, no spills); 8 warps
    for BLOCK 128, whose fp32 scores alone would take 128 registers per thread with 4 warps (BLOCK 128,
    D 128, 4 warps spilled when compiled offline for sm_90; 8 warps did not).

    With rotary, all 16 heads of a window in one program, pipelined over 2 stages: the cos/sin tiles
    are loaded once for all heads, and the next head's loads overlap this head's math (H200, 4224
    windows of 64, D 80: 1092 us; 2 heads: 1225 us; 1 head: 1791 us; a separate rotary pass + the
    kernel: 1811 us)."""
    if is_rotary and block < 128:
        return Config(16, 4, 2)
    return Config(1, 8 if block >= 128 else 4, 1)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # Triton 3.6's interpreter multiplies bf16 bit patterns as integers: dot in fp32 there
        result = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        result = tl.dot(a, b, input_precision=PRECISION)
    return result


@triton.jit
def _load_rotated_halves(ptrs, mask, cos, sin, HALF: tl.constexpr):
    """q or k rows at `ptrs` (+ the columns of one half) as their two rotated halves, each
    [BLOCK, BLOCK_H]: HF's rotate-half rotary in float32, rounded once to the input dtype
    (x1 * cos - x2 * sin, x2 * cos + x1 * sin). Contiguous loads: no column gather."""
    x1 = tl.load(ptrs, mask=mask, other=0.0)
    x2 = tl.load(ptrs + HALF, mask=mask, other=0.0)
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    return (a * cos - b * sin).to(x1.dtype), (b * cos + a * sin).to(x1.dtype)


@triton.jit
def _window_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, cu_ptr, cos_ptr, sin_ptr,
    num_heads, num_groups, qk_scale,
    q_st, q_sh, k_st, k_sh, v_st, v_sh, o_st, o_sh, rot_st,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, HEADS: tl.constexpr, STAGES: tl.constexpr, ROTARY: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    seq = pid // num_groups
    first_head = ((pid % num_groups) * HEADS).to(tl.int64)  # int64: head * head stride may be big
    start = tl.load(cu_ptr + seq)
    length = tl.load(cu_ptr + seq + 1) - start
    rows = tl.arange(0, BLOCK)
    row_ok = rows < length
    token = (start + rows).to(tl.int64)  # int64: token * row stride passes 2**31 in big buffers
    cols = tl.arange(0, BLOCK_D)
    cols_v = tl.arange(0, BLOCK_DV)
    qk_mask = row_ok[:, None] & (cols < HEAD_DIM)[None, :]
    v_mask = row_ok[:, None] & (cols_v < HEAD_DIM_V)[None, :]
    key_bias = tl.where(row_ok, 0.0, float("-inf"))[None, :]  # padded keys get no weight
    # rotary: q and k as two halves of BLOCK_H columns (40 -> 64 at D = 80: the same tensor-core work
    # as one padded 128-wide tile), S = Q1 K1^T + Q2 K2^T; cos/sin `[T, D/2]` loaded once per program
    HALF: tl.constexpr = HEAD_DIM // 2
    BLOCK_H: tl.constexpr = BLOCK_D // 2 if BLOCK_D // 2 >= 16 else 16
    cols_h = tl.arange(0, BLOCK_H)
    half_mask = row_ok[:, None] & (cols_h < HALF)[None, :]
    cos, sin = 0.0, 0.0
    if ROTARY:
        angle = (token * rot_st)[:, None] + cols_h[None, :]
        cos = tl.load(cos_ptr + angle, mask=half_mask, other=0.0)
        sin = tl.load(sin_ptr + angle, mask=half_mask, other=0.0)
    for offset in tl.range(0, HEADS, num_stages=STAGES):
        head = first_head + offset
        ok = head < num_heads  # the last group may be partial
        q_rows = (token * q_st + head * q_sh)[:, None]
        k_rows = (token * k_st + head * k_sh)[:, None]
        if ROTARY:
            q1, q2 = _load_rotated_halves(q_ptr + q_rows + cols_h[None, :], half_mask & ok, cos, sin, HALF)
            k1, k2 = _load_rotated_halves(k_ptr + k_rows + cols_h[None, :], half_mask & ok, cos, sin, HALF)
            scores = _dot(q1, tl.trans(k1), PRECISION, UPCAST) + _dot(q2, tl.trans(k2), PRECISION, UPCAST)
        else:
            q = tl.load(q_ptr + q_rows + cols[None, :], mask=qk_mask & ok, other=0.0)
            k = tl.load(k_ptr + k_rows + cols[None, :], mask=qk_mask & ok, other=0.0)
            scores = _dot(q, tl.trans(k), PRECISION, UPCAST)
        v = tl.load(v_ptr + (token * v_st + head * v_sh)[:, None] + cols_v[None, :], mask=v_mask & ok, other=0.0)
        scores = scores * qk_scale + key_bias
        probs = tl.exp2(scores - tl.max(scores, axis=1)[:, None]).to(v.dtype)
        total = tl.sum(probs.to(tl.float32), axis=1)
        out = _dot(probs, v, PRECISION, UPCAST) / total[:, None]
        o_offs = (token * o_st + head * o_sh)[:, None] + cols_v[None, :]
        tl.store(o_ptr + o_offs, out.to(o_ptr.dtype.element_ty), mask=v_mask & ok)


def _block_sizes(max_seqlen: int, dim: int, dim_v: int) -> tuple[int, int, int]:
    # tl.dot needs every dimension >= 16
    return tuple(max(16, triton.next_power_of_2(n)) for n in (max_seqlen, dim, dim_v))


def _check_rotary(q, rotary) -> None:
    cos, sin = rotary
    want = (q.shape[0], q.shape[2] // 2)
    if q.shape[2] % 2 or cos.shape != want or sin.shape != want or cos.dtype != torch.float32 \
            or sin.dtype != torch.float32 or cos.stride() != sin.stride() or cos.stride(-1) != 1:
        raise ValueError(f"rotary wants float32 cos, sin of shape {want} with equal strides (even head_dim); "
                         f"got {tuple(cos.shape)} {cos.dtype}, {tuple(sin.shape)} {sin.dtype}")


def _check(q, k, v, cu_seqlens, max_seqlen, out) -> None:
    if q.dim() != 3 or k.shape != q.shape or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"want q, k [T, H, D] and v [T, H, Dv]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one of {_DTYPES}; got {q.dtype}, {k.dtype}, {v.dtype}")
    if max(q.shape[2], v.shape[2]) > 128 or not 0 <= max_seqlen <= MAX_SEQLEN:
        raise ValueError(f"head_dim <= 128 and max_seqlen <= {MAX_SEQLEN} only; got {q.shape[2]}, {max_seqlen}")
    if cu_seqlens.dim() != 1 or cu_seqlens.device != q.device:
        raise ValueError("cu_seqlens must be a 1-D tensor on q's device")
    if out is not None and (out.shape != v.shape or out.stride(-1) != 1):
        raise ValueError(f"out must be {tuple(v.shape)} with a contiguous last dim; got {tuple(out.shape)}")


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
    scale: Optional[float] = None, out: Optional[torch.Tensor] = None, config: Optional[Config] = None,
    rotary: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """Non-causal attention within each packed short sequence (Triton), one launch for all of them.

    Args:
        q, k: `[T, H, D]`, v: `[T, H, Dv]`; fp16, bf16 or fp32 (one dtype), any row and head strides
            (e.g. views of a packed `[T, 3, H, D]` qkv); a non-contiguous last dim is copied.
        cu_seqlens: `[S + 1]` int32 (int64 is converted) on q's device: 0, ..., T, non-decreasing.
        max_seqlen: the longest sequence, <= 128 (not checked against cu_seqlens: longer sequences
            would be silently truncated, as in flash-attn's varlen API).
        scale: softmax scale (default `D ** -0.5`).
        out: `[T, H, Dv]` destination (any dtype, row/head strides, contiguous last dim); None: new, q's dtype.
        config: launch choices (`Config`), default `default_config(BLOCK)`.
        rotary: (cos, sin) `[T, D/2]` float32: q and k are rotated on load (HF's rotate-half rotary
            in float32, rounded to q's dtype), so a separate rotary pass over q and k is not needed.

    Returns:
        out `[T, H, Dv]`. Rows that no sequence covers are left as they were (uninitialised when new).
    """
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    _check(q, k, v, cu_seqlens, max_seqlen, out)
    if rotary is not None:
        _check_rotary(q, rotary)
    num_tokens, num_heads, dim = q.shape
    if out is None:
        out = torch.empty(v.shape, dtype=q.dtype, device=q.device)
    num_seqs = cu_seqlens.numel() - 1
    if num_tokens == 0 or num_heads == 0 or num_seqs <= 0 or max_seqlen == 0 or v.shape[2] == 0:
        return out
    cu = cu_seqlens if cu_seqlens.dtype == torch.int32 else cu_seqlens.to(torch.int32)
    block, block_d, block_dv = _block_sizes(max_seqlen, dim, v.shape[2])
    config = config or default_config(block, rotary is not None)
    heads = min(config.heads, num_heads)
    num_groups = triton.cdiv(num_heads, heads)
    scale = dim ** -0.5 if scale is None else scale
    cos, sin = rotary if rotary is not None else (None, None)
    _window_attention_kernel[(num_seqs * num_groups,)](
        q, k, v, out, cu, cos, sin,
        num_heads, num_groups, scale * math.log2(math.e),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), cos.stride(0) if cos is not None else 0,
        HEAD_DIM=dim, HEAD_DIM_V=v.shape[2], BLOCK=block, BLOCK_D=block_d, BLOCK_DV=block_dv,
        HEADS=heads, STAGES=config.num_stages, ROTARY=rotary is not None,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32: no TF32; fp16/bf16 ignore it
        UPCAST=q.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET", "0") == "1",
        num_warps=config.num_warps,
    )
    return out


ROTARY_SWEEP_CONFIGS = (Config(1, 4, 1), Config(2, 4, 2), Config(2, 4, 3), Config(4, 4, 2), Config(4, 4, 3),
                        Config(8, 4, 3), Config(16, 4, 2), Config(16, 4, 3))
SWEEP_CONFIGS = (Config(1, 4, 1), Config(1, 8, 1), Config(2, 4, 2), Config(2, 8, 2), Config(4, 8, 2),
                 Config(4, 8, 3), Config(16, 4, 2), Config(16, 8, 3))


def _sweep(num_windows: int, num_heads: int, dim: int, length: int) -> None:
    """Time every `SWEEP_CONFIGS` entry and cuDNN's batched SDPA on ViT-like windows (CUDA, bf16):
    q, k contiguous `[T, H, D]` (as rotary writes them), v a view of a packed qkv `[T, 3, H, D]`; then
    the rotary fused into the kernel (q, k read from the packed qkv) against a separate rotary pass."""
    from spava_kernels.sweep import batched_sdpa, time_cases

    device, dtype = torch.device("cuda"), torch.bfloat16
    qkv = torch.randn(num_windows * length, 3, num_heads, dim, device=device, dtype=dtype)
    q, k, v = qkv[:, 0].contiguous(), qkv[:, 1].contiguous(), qkv[:, 2]
    cu_seqlens = (torch.arange(num_windows + 1, device=device) * length).to(torch.int32)
    moved = 4 * q.numel() * q.element_size()  # read q, k, v and write out once
    copy_src = torch.empty(moved // 2, dtype=torch.uint8, device=device)
    copy_dst = torch.empty_like(copy_src)
    print(f"{num_windows} windows x {length} tokens, H={num_heads}, D={dim}, bf16: {moved / 1e9:.2f} GB moved; "
          f"{torch.cuda.get_device_name(device)}")
    want = batched_sdpa(q, k, v, num_windows, "math")
    cases = [("copy (same bytes)", lambda: copy_dst.copy_(copy_src)),
             ("cudnn sdpa", lambda: batched_sdpa(q, k, v, num_windows, "cudnn"))]
    cases += [(f"triton {tuple(c)}", lambda c=c: window_attention(q, k, v, cu_seqlens, length, config=c))
              for c in SWEEP_CONFIGS]
    time_cases(cases, want, moved, "GB/s")
    angles = torch.rand(q.shape[0], dim // 2, device=device) * 6
    stored = torch.zeros(q.shape[0], 2, -(-dim // 32) * 16, device=device)  # rows aligned as the ViT's
    stored[:, 0, :dim // 2], stored[:, 1, :dim // 2] = angles.cos(), angles.sin()
    cos, sin = stored[:, 0, :dim // 2], stored[:, 1, :dim // 2]
    from spava_kernels.reference import rotate_half

    rotate = torch.compile(lambda x: rotate_half(x, cos, sin))
    q_raw, k_raw = qkv[:, 0], qkv[:, 1]
    want = batched_sdpa(rotate(q_raw), rotate(k_raw), v, num_windows, "math")
    cases = [("rotary pass (compiled) + triton", lambda: window_attention(rotate(q_raw), rotate(k_raw), v,
                                                                            cu_seqlens, length))]
    cases += [(f"triton rotary {tuple(c)}", lambda c=c: window_attention(q_raw, k_raw, v, cu_seqlens, length,
                                                                          config=c, rotary=(cos, sin)))
              for c in ROTARY_SWEEP_CONFIGS]
    time_cases(cases, want, moved, "GB/s")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Sweep launch configs of the Triton window attention kernel")
    parser.add_argument("--windows", type=int, default=4224,
                        help="full windows of one ViT chunk (7B, 1440p 64f: 2 chunks of 4224 + 544 + 16 windows)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=80)
    parser.add_argument("--length", type=int, default=64)
    cli = parser.parse_args()
    _sweep(cli.windows, cli.heads, cli.dim, cli.length)
