"""Triton query-aware scoring fused with the max-pool: keys in, pooled float32 scores out.

The torch path (`spava.attention.scoring`) converts the chunk's keys to float32 (a full copy), runs
a batched GEMV, writes the `[S, Hkv]` scores, transposes them for F.max_pool1d and pools. Here one
kernel reads the keys in their own dtype, dots them with the head's summary query in float32 and
max-pools over the window in registers: the unpooled scores never reach memory.

Each program owns BLOCK_S pooled outputs of one KV head. Output i pools the scores of rows
[i - window // 2, i - window // 2 + window); the program recomputes the dot of each shifted row
block (window dots per output instead of one). That should cost little (not yet measured: see
examples/bench_kernels.py): the dots are tiny and the shifted loads of neighbouring rows hit L1/L2,
so DRAM reads each key about once.

The summary query `[Hkv, D]` (mean over query tokens and GQA group) is a tiny torch op; the
selection that follows stays torch.topk (see `spava_kernels.reference.select_topk`).

Importing this module imports Triton; `spava_kernels.dispatch` imports it only when needed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from spava_kernels.reference import pooled_length, summary_query

# Rows per program: 64 rows x 128 dims of bf16 = 16 KiB of keys per shifted block.
_BLOCK_S = 64


@triton.jit
def _score_pool_kernel(
    k_ptr, q_ptr, o_ptr,
    num_rows, num_out, dim,
    k_ss, k_sh, k_sd, q_sh, q_sd, o_sh, o_ss,
    WINDOW: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    head = tl.program_id(1).to(tl.int64)
    outs = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < dim
    summary = tl.load(q_ptr + head * q_sh + cols * q_sd, mask=col_ok, other=0.0).to(tl.float32)
    best = tl.full([BLOCK_S], float("-inf"), tl.float32)
    for shift in tl.static_range(WINDOW):
        # rows outside [0, num_rows) are F.max_pool1d's implicit -inf padding
        rows = outs - WINDOW // 2 + shift
        row_ok = (rows >= 0) & (rows < num_rows)
        offs = (rows.to(tl.int64) * k_ss + head * k_sh)[:, None] + cols[None, :] * k_sd
        keys = tl.load(k_ptr + offs, mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        score = tl.sum(keys.to(tl.float32) * summary[None, :], axis=1)
        best = tl.maximum(best, tl.where(row_ok, score, float("-inf")))
    tl.store(o_ptr + head * o_sh + outs.to(tl.int64) * o_ss, best, mask=outs < num_out)


def score_and_pool(q_query: torch.Tensor, k: torch.Tensor, window: int) -> torch.Tensor:
    """Fused query-aware score and max-pool (Triton); see `spava_kernels.reference.score_and_pool`.

    Args:
        q_query: `[Lq, Hq, D]` the query block's queries (Hq a multiple of Hkv).
        k: `[S, Hkv, D]` one chunk's keys, any float dtype, any strides (e.g. a row slice).
        window: max-pool window (stride 1, padding window // 2; <= 1: no pooling).

    Returns:
        `[S_out, Hkv]` float32 (S_out = `reference.pooled_length(S, window)`), a transposed view of a
        contiguous `[Hkv, S_out]` buffer: each head's scores are contiguous, as torch.topk along
        dim 0 likes them.
    """
    num_rows, num_kv_heads, dim = k.shape
    summary = summary_query(q_query, num_kv_heads)
    window = max(int(window), 1)
    num_out = pooled_length(num_rows, window)
    pooled = torch.empty((num_kv_heads, num_out), dtype=torch.float32, device=k.device)
    if num_out == 0 or num_kv_heads == 0:
        return pooled.t()
    if dim == 0:
        return pooled.zero_().t()
    grid = (triton.cdiv(num_out, _BLOCK_S), num_kv_heads)
    _score_pool_kernel[grid](
        k, summary, pooled,
        num_rows, num_out, dim,
        *k.stride(), *summary.stride(), *pooled.stride(),
        WINDOW=window, BLOCK_S=_BLOCK_S, BLOCK_D=triton.next_power_of_2(dim), num_warps=4,
    )
    return pooled.t()

