"""Triton flash-decoding: the split kernel and the LSE merge of `spava_kernels.decode_attention`.

A decode step attends T new query rows (1..16) to a KV cache of up to ~600K rows, so the whole cost
is reading K and V. The work is cut along the keys:

* `_split_kernel`, one program per (split, KV head): it loads the group * T query rows that read
  this KV head once (padded to BLOCK_M >= 16 rows for tl.dot), loops over the key tiles of its
  split with an online softmax in float32 (exp2, scores in log2 units), and writes a float32
  partial: the normalised output and its log2-sum-exp for every row. Each K and V tile is read by
  exactly one program, so a step reads |K| + |V| once.
* `_merge_kernel`, one program per (query row, head-dim slice): merges the splits' partials by LSE
  into `out` (any float dtype) and `lse` (float32, natural log).

The valid length is read on the device (from a 1-element tensor) or passed as an int; the grid
depends only on the capacity. The keys [0, length) are divided evenly among the *active* splits,
`min(num_splits, cdiv(length, MIN_SPLIT_KEYS))` of them, so a short cache in a long buffer still
spreads over many programs, and the others write nothing (the merge reads only the active ones).
Both kernels derive the same partition from the length (`_split_bounds`).

Causal rows (bottom-right): row t of T sees keys j < length - T + 1 + t. Tiles that every row sees
completely run unmasked; the rest (the split's last tile, the causal tail) mask scores per row.
Rows that see no key get lse -inf and a zero output.

Importing this module imports Triton; `spava_kernels.decode_attention` imports it only when needed.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)
LN2: tl.constexpr = tl.constexpr(math.log(2.0))


class Config(NamedTuple):
    """Launch choices of the split kernel: key rows per tile, warps, software-pipeline stages, and the
    fewest keys a split takes before fewer splits are used (short caches)."""

    block_n: int
    num_warps: int
    num_stages: int
    min_split_keys: int


def default_config(dtype: torch.dtype, block_m: int) -> Config:
    """64-key tiles, 4 warps, 3 stages (two 16 KiB K/V tiles per stage in bf16 at D 128). `python -m
    spava_kernels.decode_attention --sweep` on an H100 (bf16, Hq 28, Hkv 4, D 128, T 1): tiles of 32-128
    keys, 4 or 8 warps, 3-4 stages and min_split_keys 128-512 all within ~5% at 8K-594K keys, this one
    among the fastest at each (2 stages: up to 20% slower with few splits). fp32 tiles are twice the
    bytes: 32 keys, 2 stages (not timed). 8 warps for 128 query rows (a 128 x D float32 accumulator)."""
    num_warps = 8 if block_m >= 128 else 4
    if dtype == torch.float32:
        return Config(32, num_warps, 2, 256)
    return Config(64, num_warps, 3, 256)


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # Triton 3.6's interpreter multiplies bf16 bit patterns as integers: dot in fp32 there
        result = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        result = tl.dot(a, b, acc, input_precision=PRECISION)
    return result


@triton.jit
def _read_length(length_ptr, length_value, capacity, FROM_PTR: tl.constexpr):
    """The number of valid cache rows as a scalar, clamped to [0, capacity]. From the device when
    FROM_PTR (a reduction over a masked pair: the interpreter gives a plain load the shape [1])."""
    if FROM_PTR:
        pair = tl.arange(0, 2)
        raw = tl.sum(tl.load(length_ptr + pair, mask=pair < 1, other=0).to(tl.int64))
        length = tl.minimum(tl.maximum(raw, 0), capacity).to(tl.int32)
    else:
        length = length_value
    return length


@triton.jit
def _split_bounds(length, split, num_splits, MIN_SPLIT_KEYS: tl.constexpr, BLOCK_N: tl.constexpr):
    """(active splits, first key, end key) of `split`: [0, length) cut into equal BLOCK_N-aligned pieces
    over min(num_splits, cdiv(length, MIN_SPLIT_KEYS)) splits; splits past them get an empty range."""
    num_active = tl.minimum(tl.cdiv(length, MIN_SPLIT_KEYS), num_splits)
    per_split = tl.cdiv(tl.cdiv(length, tl.maximum(num_active, 1)), BLOCK_N) * BLOCK_N
    start = tl.minimum(split * per_split, length)
    return num_active, start, tl.minimum(start + per_split, length)


@triton.jit
def _fold_tile(q, k_tile_ptrs, v_tile_ptrs, first, keys_n, cols_ok, limit, acc, m_i, l_i, qk_scale,
               MASKED: tl.constexpr, SPLIT_P: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """Fold the key tile starting at key `first` into (acc, row max m_i, row sum l_i), log2 units.
    MASKED: keys at or past a row's `limit` get no weight and rows past every limit are not loaded.
    SPLIT_P (16-bit V): P V as P_hi V + P_lo V, P_hi = P rounded to V's dtype and P_lo the rest, so the
    weights keep ~16 mantissa bits instead of 8 (bf16) or 11 (fp16); the second dot is free here, where
    every tile waits on memory."""
    keys = first + keys_n
    if MASKED:
        key_ok = keys < tl.max(limit, 0)
        k = tl.load(k_tile_ptrs, mask=key_ok[:, None] & cols_ok[None, :], other=0.0)
        v = tl.load(v_tile_ptrs, mask=key_ok[:, None] & cols_ok[None, :], other=0.0)
    else:
        k = tl.load(k_tile_ptrs, mask=cols_ok[None, :], other=0.0)
        v = tl.load(v_tile_ptrs, mask=cols_ok[None, :], other=0.0)
    scores = _dot(q, tl.trans(k), None, PRECISION, UPCAST) * qk_scale
    if MASKED:
        scores = tl.where(keys[None, :] < limit[:, None], scores, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no inf - inf
    probs = tl.exp2(scores - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(probs, 1)
    probs_hi = probs.to(v.dtype)
    acc = _dot(probs_hi, v, acc * alpha[:, None], PRECISION, UPCAST)
    if SPLIT_P:
        acc = _dot((probs - probs_hi.to(tl.float32)).to(v.dtype), v, acc, PRECISION, UPCAST)
    return acc, m_new, l_i


# counts and lengths are plain runtime ints (not specialised on their values): one compiled kernel
# serves every cache capacity, head count and split count of a tile shape
@triton.jit(do_not_specialize=["length_value", "capacity", "num_splits", "num_q", "num_heads", "group"])
def _split_kernel(
    q_ptr, k_ptr, v_ptr, po_ptr, pl_ptr, length_ptr, length_value,
    capacity, num_splits, num_q, num_heads, group, qk_scale,
    q_st, q_sh, k_st, k_sh, v_st, v_sh, po_sr, po_ss, pl_sr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MIN_SPLIT_KEYS: tl.constexpr,
    STAGES: tl.constexpr, IS_CAUSAL: tl.constexpr, FROM_PTR: tl.constexpr, SPLIT_P: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, INTERPRET: tl.constexpr, MAX_TILES: tl.constexpr,
):
    split = tl.program_id(0)
    kv_head = tl.program_id(1)
    length = _read_length(length_ptr, length_value, capacity, FROM_PTR)
    num_active, start, end = _split_bounds(length, split, num_splits, MIN_SPLIT_KEYS, BLOCK_N)
    # rows are (query token t, head g of the group), token-major; rows past group * T are padding
    rows = tl.arange(0, BLOCK_M)
    token = rows // group
    head = kv_head * group + rows % group
    rows_ok = rows < num_q * group
    cols = tl.arange(0, BLOCK_D)
    cols_ok = cols < HEAD_DIM
    q = tl.load(q_ptr + (token * q_st + head * q_sh)[:, None] + cols[None, :],
                mask=rows_ok[:, None] & cols_ok[None, :], other=0.0)
    if IS_CAUSAL:
        limit = tl.minimum(length - num_q + 1 + token, end)
    else:
        limit = tl.zeros([BLOCK_M], dtype=tl.int32) + end
    limit = tl.where(rows_ok, limit, end)  # padding rows: as the widest row, never narrower

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    keys_n = tl.arange(0, BLOCK_N)
    # the head's base in int64 (a cache row offset passes 2**31); tile offsets stay int32
    k_ptrs = k_ptr + kv_head.to(tl.int64) * k_sh + (keys_n * k_st)[:, None] + cols[None, :]
    v_ptrs = v_ptr + kv_head.to(tl.int64) * v_sh + (keys_n * v_st)[:, None] + cols[None, :]
    # keys every row sees: [start, start + whole tiles below the narrowest row's limit)
    narrowest = tl.maximum(tl.min(limit, 0), start)
    full_end = start + (narrowest - start) // BLOCK_N * BLOCK_N
    if INTERPRET:  # the interpreter's scalars cannot bound a loop: every tile up to a constexpr count, masked
        for tile in range(0, MAX_TILES):
            first = start + tile * BLOCK_N
            acc, m_i, l_i = _fold_tile(q, k_ptrs + first.to(tl.int64) * k_st, v_ptrs + first.to(tl.int64) * v_st,
                                       first, keys_n, cols_ok, limit, acc, m_i, l_i, qk_scale, True, SPLIT_P,
                                       PRECISION, UPCAST)
    else:
        for first in tl.range(start, full_end, BLOCK_N, num_stages=STAGES):
            acc, m_i, l_i = _fold_tile(q, k_ptrs + first.to(tl.int64) * k_st, v_ptrs + first.to(tl.int64) * v_st,
                                       first, keys_n, cols_ok, limit, acc, m_i, l_i, qk_scale, False, SPLIT_P,
                                       PRECISION, UPCAST)
        for first in tl.range(full_end, end, BLOCK_N):
            acc, m_i, l_i = _fold_tile(q, k_ptrs + first.to(tl.int64) * k_st, v_ptrs + first.to(tl.int64) * v_st,
                                       first, keys_n, cols_ok, limit, acc, m_i, l_i, qk_scale, True, SPLIT_P,
                                       PRECISION, UPCAST)

    has_keys = l_i > 0.0
    out = tl.where(has_keys[:, None], acc / tl.where(has_keys, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
    part_row = token * num_heads + head
    is_active = split < num_active  # inactive splits write nothing: the merge does not read them
    tl.store(po_ptr + (part_row * po_sr + split * po_ss)[:, None] + cols[None, :], out,
             mask=(rows_ok & is_active)[:, None] & cols_ok[None, :])
    tl.store(pl_ptr + part_row * pl_sr + split, lse, mask=rows_ok & is_active)


@triton.jit(do_not_specialize=["length_value", "capacity", "num_splits", "num_heads"])
def _merge_kernel(
    po_ptr, pl_ptr, o_ptr, lo_ptr, length_ptr, length_value,
    capacity, num_splits, num_heads,
    po_sr, po_ss, pl_sr, o_st, o_sh, lo_st, lo_sh,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_DM: tl.constexpr,
    BLOCK_N: tl.constexpr, MIN_SPLIT_KEYS: tl.constexpr, FROM_PTR: tl.constexpr,
):
    row = tl.program_id(0)  # token * num_heads + head
    cols = tl.program_id(1) * BLOCK_DM + tl.arange(0, BLOCK_DM)
    cols_ok = cols < HEAD_DIM
    length = _read_length(length_ptr, length_value, capacity, FROM_PTR)
    num_active, _, _ = _split_bounds(length, 0, num_splits, MIN_SPLIT_KEYS, BLOCK_N)
    splits = tl.arange(0, BLOCK_S)
    splits_ok = splits < num_active
    lse = tl.load(pl_ptr + row * pl_sr + splits, mask=splits_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)  # no split saw a key (length 0, early causal row)
    weights = tl.exp2(lse - m_safe)  # empty splits (-inf) weigh 0
    total = tl.sum(weights, 0)
    parts = tl.load(po_ptr + row * po_sr + (splits * po_ss)[:, None] + cols[None, :],
                    mask=splits_ok[:, None] & cols_ok[None, :], other=0.0)
    merged = tl.sum(parts * weights[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    has_keys = total > 0.0
    lse_out = tl.where(has_keys, (m_safe + tl.log2(tl.where(has_keys, total, 1.0))) * LN2, float("-inf"))
    token = row // num_heads
    head = row % num_heads
    tl.store(o_ptr + token * o_st + head * o_sh + cols, merged.to(o_ptr.dtype.element_ty), mask=cols_ok)
    tl.store(lo_ptr + token * lo_st + head * lo_sh, lse_out, mask=tl.program_id(1) == 0)


def _merge_tile(num_splits: int, dim: int) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_DM): every split at once, head-dim slices of ~8K float32 elements per program."""
    block_s = max(2, triton.next_power_of_2(num_splits))
    block_d = triton.next_power_of_2(dim)
    return block_s, max(8, min(block_d, 8192 // block_s))


def launch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, length_ptr: Optional[torch.Tensor],
           length_value: int, scale: float, is_causal: bool, num_splits: int, out: torch.Tensor,
           lse_out: torch.Tensor, partial_out: torch.Tensor, partial_lse: torch.Tensor,
           config: Optional[Config] = None) -> None:
    """Run both kernels (shapes already checked by `spava_kernels.decode_attention`).

    q `[T, Hq, D]`, k_cache / v_cache `[C, Hkv, D]` (last dims contiguous), length from `length_ptr`
    (1-element int tensor on the device) or `length_value`; partial_out `[>= T * Hq, >= num_splits, D]`
    and partial_lse `[>= T * Hq, >= num_splits]` float32 with unit stride in the last dim."""
    num_q, num_heads, dim = q.shape
    capacity, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    block_m = max(16, triton.next_power_of_2(group * num_q))
    block_d = max(16, triton.next_power_of_2(dim))
    config = config or default_config(q.dtype, block_m)
    interpret = os.environ.get("TRITON_INTERPRET", "0") == "1"
    from_ptr = length_ptr is not None
    # the interpreter loops over a split's largest tile count: a split holds at most max(C / splits,
    # min_split_keys) keys rounded up to tiles (none of this when compiled: no respecialising)
    split_keys = min(capacity, max(triton.cdiv(capacity, num_splits), config.min_split_keys))
    max_tiles = triton.cdiv(split_keys, config.block_n) if interpret else 0
    _split_kernel[(num_splits, num_kv_heads)](
        q, k_cache, v_cache, partial_out, partial_lse, length_ptr, length_value,
        capacity, num_splits, num_q, num_heads, group, scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        partial_out.stride(0), partial_out.stride(1), partial_lse.stride(0),
        HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_D=block_d,
        BLOCK_N=config.block_n, MIN_SPLIT_KEYS=config.min_split_keys, STAGES=config.num_stages,
        IS_CAUSAL=is_causal, FROM_PTR=from_ptr, SPLIT_P=q.dtype != torch.float32,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32: no TF32; fp16/bf16 ignore it
        UPCAST=q.dtype == torch.bfloat16 and interpret, INTERPRET=interpret, MAX_TILES=max_tiles,
        num_warps=config.num_warps,
    )
    block_s, block_dm = _merge_tile(num_splits, dim)
    _merge_kernel[(num_q * num_heads, triton.cdiv(dim, block_dm))](
        partial_out, partial_lse, out, lse_out, length_ptr, length_value,
        capacity, num_splits, num_heads,
        partial_out.stride(0), partial_out.stride(1), partial_lse.stride(0),
        out.stride(0), out.stride(1), lse_out.stride(0), lse_out.stride(1),
        HEAD_DIM=dim, BLOCK_S=block_s, BLOCK_DM=block_dm, BLOCK_N=config.block_n,
        MIN_SPLIT_KEYS=config.min_split_keys, FROM_PTR=from_ptr, num_warps=4,
    )
