"""Hopper (sm_90) flash attention in Gluon: a TMA producer warp, asynchronous wgmma, and the softmax of one key
tile overlapped with the P V matmul of the previous one.

The Triton kernel in `flash_attention.py` runs one key tile as dot -> softmax -> dot with the tensor cores idle
during the softmax. At head_dim 80 the softmax (8192 exp2 per 128 x 64 tile on the 16-per-clock special-function
unit, plus max, sum, scale and casts) costs about as much as the two matmuls, so that kernel stops near 43% of the
tensor-core peak. This one is written in Gluon, Triton's lower-level dialect, where warps, shared buffers,
barriers and wgmma waits are explicit:

* one producer warp issues all TMA loads (Q once, then K/V tiles into a ring of STAGES buffers, each guarded by
  a `ready` barrier that counts the bytes in and an `empty` barrier the consumers arrive on when done);
* the consumer warps (one or two partitions of one warpgroup, 64 or 128 query rows each) keep two key tiles in
  flight: they issue S(i) = Q K(i)^T and O += P(i-1) V(i-1) back to back, wait only for S(i), run the softmax
  of tile i while the tensor cores do the P V matmul, then wait for it and rescale O;
* head_dim is split into exact power-of-two pieces (80 = 64 + 16) for both matmuls, as in `flash_attention.py`,
  so no tensor-core work multiplies padding.

The numerics are those of `flash_attention.py`: float32 scores and online softmax with exp2, P rounded to the
input dtype for the second matmul, one division at the end. Keys past a sequence's end (the last partial tile
reads the next sequence's rows or TMA's zero fill) get a score of -inf.

The default on sm_90 (`dispatch.SM90_FLASH_IS_DEFAULT`). On an H200, 16 sequences x 18,564 tokens, H 16, D 80
(the 7B ViT's full-attention blocks at 1440p): 504 TFLOP/s with `DEFAULT_CONFIG`, against 419 for the Triton kernel
and 374 for cuDNN (docs/benchmarks.md, "Kernels"). Import cost: Triton's Gluon; `spava_kernels.dispatch` imports it
only on CUDA sm_90. `python -m spava_kernels.flash_attention_sm90` times its configs against the Triton kernel and
cuDNN.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

_REGISTERS_PER_SM = 65536
_PRODUCER_REGISTERS = gl.constexpr(24)  # the producer warp only computes TMA coordinates


class Config(NamedTuple):
    """Launch choices: query rows per consumer partition (64 per warpgroup), key rows per tile, K/V ring depth,
    warps per consumer partition (4 per warpgroup), consumer partitions per CTA (each an independent group of
    warps with its own query rows; 2 lets one run its softmax while the other's matmuls run), CTAs meant to
    share an SM (sets the register budget), overlap of the softmax with the P V matmul, and (with two
    pipelined consumers) strict alternation of the two consumers' matmul issues, as FA3's ping-pong."""

    block_m: int
    block_n: int
    num_stages: int
    num_warps: int
    num_consumers: int = 1
    ctas_per_sm: int = 1
    pipelined: bool = True
    pingpong: bool = False


# H200 sweep at D 80 (TFLOP/s): 4 stages 504, 3 stages 498, 2 stages 436; ping-pong 491 (3 stages); serial
# consumers 485-487; one consumer of 128 rows, 2 CTAs per SM, 467
DEFAULT_CONFIG = Config(64, 128, 4, 4, 2, 1, True)


@gluon.jit
def _producer(descs, bufs, bars, q_row, kv_row, col_head, num_tiles, DA: gl.constexpr, HAS_B: gl.constexpr,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, NUM_CONSUMERS: gl.constexpr):
    """One warp: each consumer's Q rows once, then every K/V tile of the sequence into the ring (waiting for a
    free slot first)."""
    qa_desc, qb_desc, ka_desc, kb_desc, va_desc, vb_desc = descs
    qa_bufs, qb_bufs, ka_bufs, kb_bufs, va_bufs, vb_bufs = bufs
    q_bar, ready_bars, empty_bars, turn_bars = bars
    mbarrier.expect(q_bar, NUM_CONSUMERS * (qa_desc.block_type.nbytes + HAS_B * qb_desc.block_type.nbytes))
    for part in gl.static_range(NUM_CONSUMERS):
        tma.async_copy_global_to_shared(qa_desc, [q_row + part * BLOCK_M, col_head], q_bar, qa_bufs.index(part))
        if HAS_B:
            tma.async_copy_global_to_shared(qb_desc, [q_row + part * BLOCK_M, col_head + DA], q_bar,
                                            qb_bufs.index(part))
    kv_bytes: gl.constexpr = 2 * (ka_desc.block_type.nbytes + HAS_B * kb_desc.block_type.nbytes)
    for tile in range(num_tiles):
        slot = tile % STAGES
        # a fresh mbarrier counts as having completed the phase before phase 0: the first pass does not wait
        mbarrier.wait(empty_bars.index(slot), ((tile // STAGES) & 1) ^ 1)
        ready = ready_bars.index(slot)
        mbarrier.expect(ready, kv_bytes)
        row = kv_row + tile * BLOCK_N
        tma.async_copy_global_to_shared(ka_desc, [row, col_head], ready, ka_bufs.index(slot))
        tma.async_copy_global_to_shared(va_desc, [row, col_head], ready, va_bufs.index(slot))
        if HAS_B:
            tma.async_copy_global_to_shared(kb_desc, [row, col_head + DA], ready, kb_bufs.index(slot))
            tma.async_copy_global_to_shared(vb_desc, [row, col_head + DA], ready, vb_bufs.index(slot))


@gluon.jit
def _issue_scores(q_a, q_b, bufs, ready_bars, tile, s_zero, HAS_B: gl.constexpr, STAGES: gl.constexpr):
    """Wait for key tile `tile` and issue S = Q_a K_a^T + Q_b K_b^T asynchronously: [BLOCK_M, BLOCK_N] fp32."""
    qa_bufs, qb_bufs, ka_bufs, kb_bufs, va_bufs, vb_bufs = bufs
    slot = tile % STAGES
    mbarrier.wait(ready_bars.index(slot), (tile // STAGES) & 1)
    scores = warpgroup_mma(q_a, ka_bufs.index(slot).permute((1, 0)), s_zero, use_acc=False, is_async=True)
    if HAS_B:
        scores = warpgroup_mma(q_b, kb_bufs.index(slot).permute((1, 0)), scores, is_async=True)
    return scores


@gluon.jit
def _issue_pv(bufs, tile, probs, acc_a, acc_b, HAS_B: gl.constexpr, STAGES: gl.constexpr):
    """O_a += P V_a, O_b += P V_b for key tile `tile`, asynchronously (P from registers; the two P operands
    are returned so that the wait keeps their registers alive until the matmuls have read them)."""
    qa_bufs, qb_bufs, ka_bufs, kb_bufs, va_bufs, vb_bufs = bufs
    slot = tile % STAGES
    p_a = gl.convert_layout(probs, gl.DotOperandLayout(0, acc_a.type.layout, 2))
    acc_a = warpgroup_mma(p_a, va_bufs.index(slot), acc_a, is_async=True)
    p_b = p_a
    if HAS_B:
        p_b = gl.convert_layout(probs, gl.DotOperandLayout(0, acc_b.type.layout, 2))
        acc_b = warpgroup_mma(p_b, vb_bufs.index(slot), acc_b, is_async=True)
    return acc_a, acc_b, p_a, p_b


@gluon.jit
def _softmax(scores, m_i, l_i, qk_scale, num_valid, is_masked, dtype: gl.constexpr, BLOCK_N: gl.constexpr):
    """Online-softmax step on scores [BLOCK_M, BLOCK_N] (log2 units after qk_scale): P in `dtype`, the factor
    alpha that rescales the running output, and the new row max and row sum. Keys >= num_valid are masked
    when is_masked (only the last, partial tile)."""
    if is_masked:
        cols = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, scores.type.layout))
        scores = gl.where(gl.expand_dims(cols < num_valid, 0), scores, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(scores, 1) * qk_scale)
    probs = gl.exp2(scores * qk_scale - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(probs, 1)
    return probs.to(dtype), alpha, m_new, l_i


@gluon.jit
def _rescale(acc, alpha):
    return acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, acc.type.layout)), 1)


@gluon.jit
def _take_turn(turn_bars, part: gl.constexpr, step, PINGPONG: gl.constexpr):
    """Ping-pong: consumer `part` waits until the other one has issued its matmuls of step `step - part`
    (consumer 0 goes first: a fresh mbarrier counts as having completed phase 1)."""
    if PINGPONG:
        mbarrier.wait(turn_bars.index(part), (step + 1 - part) & 1)


@gluon.jit
def _pass_turn(turn_bars, part: gl.constexpr, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.arrive(turn_bars.index(1 - part), count=1)


@gluon.jit
def _consumer(part: gl.constexpr, bufs, bars, num_tiles, length_kv, qk_scale, o_ptr, o_row, o_head, o_st, m_valid,
              DA: gl.constexpr, DB: gl.constexpr, HAS_B: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
              STAGES: gl.constexpr, PIPELINED: gl.constexpr, PINGPONG: gl.constexpr, NUM_WARPS: gl.constexpr):
    """One consumer partition (query rows part * BLOCK_M ...): all matmuls and the softmax of its rows, then its
    normalised output rows."""
    q_bar, ready_bars, empty_bars, turn_bars = bars
    q_a = bufs[0].index(part)
    q_b = bufs[1].index(part)
    dtype: gl.constexpr = q_a.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    a_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, DA, 16])
    b_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NUM_WARPS, 1],
                                                       instr_shape=[16, DB, 16])
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    acc_a = gl.zeros([BLOCK_M, DA], gl.float32, a_layout)
    acc_b = gl.zeros([BLOCK_M, DB], gl.float32, b_layout)
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, row_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, row_layout)
    num_full = length_kv // BLOCK_N
    mbarrier.wait(q_bar, 0)
    if PIPELINED:
        if num_tiles > 0:
            _take_turn(turn_bars, part, 0, PINGPONG)
            scores = _issue_scores(q_a, q_b, bufs, ready_bars, 0, s_zero, HAS_B, STAGES)
            _pass_turn(turn_bars, part, PINGPONG)
            scores = warpgroup_mma_wait(0, deps=[scores])
            probs, alpha, m_i, l_i = _softmax(scores, m_i, l_i, qk_scale, length_kv, num_full == 0, dtype, BLOCK_N)
            for tile in range(1, num_tiles):
                _take_turn(turn_bars, part, tile, PINGPONG)
                scores = _issue_scores(q_a, q_b, bufs, ready_bars, tile, s_zero, HAS_B, STAGES)
                acc_a, acc_b, p_a, p_b = _issue_pv(bufs, tile - 1, probs, acc_a, acc_b, HAS_B, STAGES)
                _pass_turn(turn_bars, part, PINGPONG)
                scores = warpgroup_mma_wait(1 + HAS_B, deps=[scores])  # S(tile) done; P V may still run
                probs, alpha, m_i, l_i = _softmax(scores, m_i, l_i, qk_scale, length_kv - tile * BLOCK_N,
                                                  tile >= num_full, dtype, BLOCK_N)
                acc_a, acc_b, p_a, p_b = warpgroup_mma_wait(0, deps=[acc_a, acc_b, p_a, p_b])
                mbarrier.arrive(empty_bars.index((tile - 1) % STAGES), count=1)
                acc_a = _rescale(acc_a, alpha)
                if HAS_B:
                    acc_b = _rescale(acc_b, alpha)
            _take_turn(turn_bars, part, num_tiles, PINGPONG)
            acc_a, acc_b, p_a, p_b = _issue_pv(bufs, num_tiles - 1, probs, acc_a, acc_b, HAS_B, STAGES)
            _pass_turn(turn_bars, part, PINGPONG)
            acc_a, acc_b, p_a, p_b = warpgroup_mma_wait(0, deps=[acc_a, acc_b, p_a, p_b])
            mbarrier.arrive(empty_bars.index((num_tiles - 1) % STAGES), count=1)
    else:
        for tile in range(num_tiles):
            scores = _issue_scores(q_a, q_b, bufs, ready_bars, tile, s_zero, HAS_B, STAGES)
            scores = warpgroup_mma_wait(0, deps=[scores])
            probs, alpha, m_i, l_i = _softmax(scores, m_i, l_i, qk_scale, length_kv - tile * BLOCK_N,
                                              tile >= num_full, dtype, BLOCK_N)
            acc_a = _rescale(acc_a, alpha)
            if HAS_B:
                acc_b = _rescale(acc_b, alpha)
            acc_a, acc_b, p_a, p_b = _issue_pv(bufs, tile, probs, acc_a, acc_b, HAS_B, STAGES)
            acc_a, acc_b, p_a, p_b = warpgroup_mma_wait(0, deps=[acc_a, acc_b, p_a, p_b])
            mbarrier.arrive(empty_bars.index(tile % STAGES), count=1)
    inv = 1.0 / l_i
    _store(o_ptr, acc_a, inv, o_row + part * BLOCK_M, o_head, o_st, m_valid - part * BLOCK_M, 0, BLOCK_M, DA)
    if HAS_B:
        _store(o_ptr, acc_b, inv, o_row + part * BLOCK_M, o_head, o_st, m_valid - part * BLOCK_M, DA, BLOCK_M, DB)


@gluon.jit
def _store(o_ptr, acc, inv, o_row, o_head, o_st, m_valid, first_col, BLOCK_M: gl.constexpr, WIDTH: gl.constexpr):
    """Rows < m_valid of acc / l -> o[o_row + r, head, first_col:first_col + WIDTH] (pointer stores: the rows
    past a sequence belong to the next one)."""
    layout: gl.constexpr = acc.type.layout
    rows = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, WIDTH, layout=gl.SliceLayout(0, layout))
    offsets = gl.expand_dims((o_row + rows).to(gl.int64) * o_st + o_head, 1) + gl.expand_dims(first_col + cols, 0)
    out = acc * gl.expand_dims(gl.convert_layout(inv, gl.SliceLayout(1, layout)), 1)
    gl.store(o_ptr + offsets, out.to(o_ptr.dtype.element_ty), mask=gl.expand_dims(rows < m_valid, 1))


@gluon.jit
def _flash_sm90_kernel(
    qa_desc, qb_desc, ka_desc, kb_desc, va_desc, vb_desc, o_ptr, cu_ptr,
    num_heads, qk_scale, o_st, o_sh,
    HEAD_DIM: gl.constexpr, DA: gl.constexpr, DB: gl.constexpr, HAS_B: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr, PIPELINED: gl.constexpr,
    PINGPONG: gl.constexpr, NUM_CONSUMERS: gl.constexpr, CONSUMER_REGISTERS: gl.constexpr, num_warps: gl.constexpr,
):
    m_block = gl.program_id(0)
    seq = gl.program_id(1) // num_heads
    head = gl.program_id(1) % num_heads
    start = gl.load(cu_ptr + seq)
    length = gl.load(cu_ptr + seq + 1) - start
    first_m = m_block * (NUM_CONSUMERS * BLOCK_M)
    length_kv = gl.where(first_m < length, length, 0)  # query blocks past the end do nothing
    num_tiles = gl.cdiv(length_kv, BLOCK_N)
    dtype: gl.constexpr = qa_desc.dtype
    qa_bufs = gl.allocate_shared_memory(dtype, [NUM_CONSUMERS] + qa_desc.block_type.shape, qa_desc.layout)
    qb_bufs = gl.allocate_shared_memory(dtype, [NUM_CONSUMERS] + qb_desc.block_type.shape, qb_desc.layout)
    ka_bufs = gl.allocate_shared_memory(dtype, [STAGES] + ka_desc.block_type.shape, ka_desc.layout)
    kb_bufs = gl.allocate_shared_memory(dtype, [STAGES] + kb_desc.block_type.shape, kb_desc.layout)
    va_bufs = gl.allocate_shared_memory(dtype, [STAGES] + va_desc.block_type.shape, va_desc.layout)
    vb_bufs = gl.allocate_shared_memory(dtype, [STAGES] + vb_desc.block_type.shape, vb_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    ready_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    mbarrier.init(turn_bars.index(0), count=1)
    mbarrier.init(turn_bars.index(1), count=1)
    for slot in gl.static_range(STAGES):
        mbarrier.init(ready_bars.index(slot), count=1)
        mbarrier.init(empty_bars.index(slot), count=NUM_CONSUMERS)  # every consumer releases every slot
    bufs = (qa_bufs, qb_bufs, ka_bufs, kb_bufs, va_bufs, vb_bufs)
    bars = (q_bar, ready_bars, empty_bars, turn_bars)
    descs = (qa_desc, qb_desc, ka_desc, kb_desc, va_desc, vb_desc)
    o_row = start + first_m
    m_valid = length - first_m
    col_head = head * HEAD_DIM
    if NUM_CONSUMERS == 1:
        gl.warp_specialize([
            (_consumer, (0, bufs, bars, num_tiles, length_kv, qk_scale, o_ptr, o_row, head * o_sh, o_st, m_valid,
                         DA, DB, HAS_B, BLOCK_M, BLOCK_N, STAGES, PIPELINED, PINGPONG, num_warps)),
            (_producer, (descs, bufs, bars, o_row, start, col_head, num_tiles, DA, HAS_B, BLOCK_M, BLOCK_N, STAGES,
                         NUM_CONSUMERS)),
        ], [1], [_PRODUCER_REGISTERS])
    else:
        gl.warp_specialize([
            (_consumer, (0, bufs, bars, num_tiles, length_kv, qk_scale, o_ptr, o_row, head * o_sh, o_st, m_valid,
                         DA, DB, HAS_B, BLOCK_M, BLOCK_N, STAGES, PIPELINED, PINGPONG, num_warps)),
            (_consumer, (1, bufs, bars, num_tiles, length_kv, qk_scale, o_ptr, o_row, head * o_sh, o_st, m_valid,
                         DA, DB, HAS_B, BLOCK_M, BLOCK_N, STAGES, PIPELINED, PINGPONG, num_warps)),
            (_producer, (descs, bufs, bars, o_row, start, col_head, num_tiles, DA, HAS_B, BLOCK_M, BLOCK_N, STAGES,
                         NUM_CONSUMERS)),
        ], [num_warps, 1], [CONSUMER_REGISTERS, _PRODUCER_REGISTERS])


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether this kernel can run these inputs: CUDA sm_90, fp16/bf16, head_dim = a power of two >= 16 plus a
    remainder that is 0 or a power of two >= 16 (64 + 16 = 80, 64, 128, ...) whose tiles fit in shared memory,
    and TMA-readable `[T, H * D]` views (contiguous heads, 16-byte aligned row strides and bases)."""
    if not (q.is_cuda and torch.cuda.get_device_capability(q.device) == (9, 0)):
        return False
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return False
    dim_a, dim_b = split_head_dim(q.shape[-1])
    if not 16 <= dim_a <= 128 or (dim_b and (dim_b < 16 or dim_b & (dim_b - 1))):
        return False
    if shared_bytes(default_config(q.shape[-1]), q.shape[-1]) > _MAX_SHARED_BYTES:  # e.g. 192 = 128 + 64
        return False
    for x in (q, k, v):
        if x.stride(-1) != 1 or x.stride(1) != x.shape[2] or (x.stride(0) * x.element_size()) % 16 or x.data_ptr() % 16:
            return False
    return True


_MAX_SHARED_BYTES = 227 * 1024  # per CTA on an H100 / H200


def shared_bytes(config: Config, head_dim: int) -> int:
    """Bytes of shared memory for the Q tiles and the K/V ring (2-byte elements; the mbarriers add a few hundred,
    and the compiler drops the second head_dim piece's buffers when head_dim has none)."""
    return 2 * head_dim * (config.num_consumers * config.block_m + 2 * config.num_stages * config.block_n)


def default_config(head_dim: int) -> Config:
    """`DEFAULT_CONFIG` (the H200 sweep's best at head_dim 80) with as many K/V stages as fit in shared memory
    (head_dim 128: 3)."""
    config = DEFAULT_CONFIG
    while config.num_stages > 2 and shared_bytes(config, head_dim) > _MAX_SHARED_BYTES:
        config = config._replace(num_stages=config.num_stages - 1)
    return config


def split_head_dim(dim: int) -> tuple[int, int]:
    """head_dim -> (DA, DB): DA the largest power of two <= dim, DB the rest (80 -> 64, 16)."""
    dim_a = 1 << (dim.bit_length() - 1)
    return dim_a, dim - dim_a


def register_budget(config: Config) -> tuple[int, int]:
    """(maxnreg for the launch, registers per consumer thread). Registers are handed out per warpgroup: the
    producer warp takes a warpgroup of its own at `_PRODUCER_REGISTERS`, and the consumers share what is left
    of the SM's 64K registers divided among `ctas_per_sm` CTAs (a multiple of 8, at most 240)."""
    consumer_threads = config.num_consumers * config.num_warps * 32
    num_threads = consumer_threads + 128
    max_registers = min(255, _REGISTERS_PER_SM // (config.ctas_per_sm * num_threads)) // 8 * 8
    consumer = (max_registers * num_threads - _PRODUCER_REGISTERS.value * 128) // consumer_threads // 8 * 8
    return max_registers, min(240, consumer)


def _descriptor(x: torch.Tensor, rows: int, width: int) -> TensorDescriptor:
    num_tokens, num_heads, dim = x.shape
    layout = gl.NVMMASharedLayout.get_default_for([rows, width], _GL_DTYPES[x.dtype])
    return TensorDescriptor(x, [num_tokens, num_heads * dim], [x.stride(0), 1], [rows, width], layout)


_GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}


def flash_attention_sm90(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
    scale: Optional[float] = None, out: Optional[torch.Tensor] = None, config: Optional[Config] = None,
) -> torch.Tensor:
    """Non-causal attention within each packed sequence, one launch (the contract of
    `flash_attention.flash_attention`; check `supports(q, k, v)` first).

    Args:
        q, k, v: `[T, H, D]` fp16/bf16 with contiguous heads (e.g. views of a packed `[T, 3, H, D]` qkv).
        cu_seqlens: `[S + 1]` int32 on q's device; max_seqlen: the longest sequence.
        scale: softmax scale (default `D ** -0.5`); out: `[T, H, D]` destination or None; config: `Config`.

    Returns:
        out `[T, H, D]`.
    """
    if not supports(q, k, v):
        raise ValueError("flash_attention_sm90 needs CUDA sm_90, fp16/bf16 q/k/v with contiguous heads, 16-byte "
                         f"aligned rows and head_dim 2^a (+ 2^b >= 16); got {q.dtype} {tuple(q.shape)} on {q.device}")
    num_tokens, num_heads, dim = q.shape
    config = config or default_config(dim)
    if shared_bytes(config, dim) > _MAX_SHARED_BYTES:
        raise ValueError(f"{config} needs {shared_bytes(config, dim)} bytes of shared memory at head_dim {dim}, "
                         f"more than the {_MAX_SHARED_BYTES} of an sm_90 CTA: use fewer num_stages or smaller blocks")
    if out is None:
        out = torch.empty(v.shape, dtype=q.dtype, device=q.device)
    if out.stride(-1) != 1 or out.shape != v.shape:
        raise ValueError(f"out must be {tuple(v.shape)} with a contiguous last dim; got {tuple(out.shape)}")
    num_seqs = cu_seqlens.numel() - 1
    if num_tokens == 0 or num_heads == 0 or num_seqs <= 0 or max_seqlen <= 0:
        return out
    cu = cu_seqlens if cu_seqlens.dtype == torch.int32 else cu_seqlens.to(torch.int32)
    dim_a, dim_b = split_head_dim(dim)
    descs = [_descriptor(x, rows, width) for x, rows in ((q, config.block_m), (k, config.block_n), (v, config.block_n))
             for width in (dim_a, dim_b or 16)]
    scale = dim ** -0.5 if scale is None else scale
    grid = (triton.cdiv(max_seqlen, config.block_m * config.num_consumers), num_seqs * num_heads)
    _flash_sm90_kernel[grid](*descs, out, cu, num_heads, scale * math.log2(math.e), out.stride(0), out.stride(1),
                             **launch_options(config, dim))
    return out


def launch_options(config: Config, head_dim: int) -> dict:
    """The kernel's compile-time constants, num_warps and maxnreg for `config` at `head_dim` (also what an
    offline compile needs)."""
    dim_a, dim_b = split_head_dim(head_dim)
    max_registers, consumer_registers = register_budget(config)
    return dict(HEAD_DIM=head_dim, DA=dim_a, DB=dim_b or 16, HAS_B=dim_b > 0, BLOCK_M=config.block_m,
                BLOCK_N=config.block_n, STAGES=config.num_stages, PIPELINED=config.pipelined,
                PINGPONG=config.pingpong and config.pipelined and config.num_consumers == 2,
                NUM_CONSUMERS=config.num_consumers, CONSUMER_REGISTERS=consumer_registers,
                num_warps=config.num_warps, maxnreg=max_registers)


SWEEP_CONFIGS = (Config(64, 128, 4, 4, 2, 1, True), Config(64, 128, 3, 4, 2, 1, True),
                 Config(64, 128, 3, 4, 2, 1, True, True), Config(64, 128, 4, 4, 2, 1, False),
                 Config(128, 64, 2, 4, 1, 2, True), Config(64, 64, 4, 4, 2, 1, True))


if __name__ == "__main__":
    import functools

    from spava_kernels.flash_attention import flash_attention, sweep
    from spava_kernels.sweep import attention_sweep_args

    sweep(*attention_sweep_args("Sweep launch configs of the Gluon sm_90 flash attention kernel"),
          [("triton flash_attention default", flash_attention)]
          + [(f"gluon {tuple(c)}", functools.partial(flash_attention_sm90, config=c)) for c in SWEEP_CONFIGS])
