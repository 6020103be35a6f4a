"""Hopper (sm_90) gate/up GEMM with the SwiGLU epilogue in Gluon: persistent CTAs, a TMA producer warp and two
consumer warpgroups.

Same contract and rounding as `swiglu_gemm.py` (silu(x W_gate^T + b_gate) * (x W_up^T + b_up), rounded where HF
rounds). The Triton kernel there issues its TMA loads from the warps that run the matmuls and starts one CTA per
output tile; here one warp does nothing but keep a ring of STAGES (x, W_gate, W_up) K-slices full, the consumer
warpgroups keep one K-step of wgmma in flight, and each CTA walks output tiles in a grouped order (GROUP_M row
tiles share their W column tiles while they are in L2) so that the producer already fetches the next tile's
slices during the epilogue. The epilogue writes through shared memory with a TMA store (rows past the end are
clipped by TMA).

The default on sm_90 (`dispatch.SM90_SWIGLU_IS_DEFAULT`). On an H200, 297,024 x 1280 rows into 2 x 3456 columns:
8.10 ms, 649 TFLOP/s, against 9.03 ms for the Triton kernel, 9.34 ms for cuBLAS + a compiled SwiGLU and 7.97 ms
for the cuBLAS GEMM alone (docs/benchmarks.md, "Kernels").
`python -m spava_kernels.swiglu_gemm_sm90` times configs against the Triton kernel and cuBLAS + SwiGLU.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

_PRODUCER_REGISTERS = gl.constexpr(40)  # tile coordinates and the ring counters


class Config(NamedTuple):  # the fields of swiglu_gemm.Config, but a type of its own: dispatch picks the kernel by it
    """Output tile rows and columns (each column block is computed for gate and up), K slice, row tiles per
    group, ring depth, consumer warps (4 per warpgroup; 64 rows each)."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_stages: int
    num_warps: int


DEFAULT_CONFIG = Config(128, 128, 64, 8, 4, 8)  # H200 sweep: 649 TFLOP/s (3 stages 644, 2 stages 476)


@gluon.jit
def _tile_coords(tile, num_m, num_n, GROUP_M: gl.constexpr):
    """Grouped order: GROUP_M row tiles, then the next column tile (W slices reused from L2)."""
    per_group = GROUP_M * num_n
    first_m = (tile // per_group) * GROUP_M
    size_m = gl.minimum(num_m - first_m, GROUP_M)
    return first_m + (tile % per_group) % size_m, (tile % per_group) // size_m


@gluon.jit
def _producer(x_desc, w_desc, x_bufs, g_bufs, u_bufs, ready_bars, empty_bars, num_rows, width,
              K_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
              GROUP_M: gl.constexpr, STAGES: gl.constexpr):
    num_m = gl.cdiv(num_rows, BLOCK_M)
    num_n = gl.cdiv(width, BLOCK_N)
    step_bytes: gl.constexpr = x_desc.block_type.nbytes + 2 * w_desc.block_type.nbytes
    count = 0
    for tile in range(gl.program_id(0), num_m * num_n, gl.num_programs(0)):
        pid_m, pid_n = _tile_coords(tile, num_m, num_n, GROUP_M)
        for k in gl.static_range(0, K_DIM, BLOCK_K):
            slot = count % STAGES
            mbarrier.wait(empty_bars.index(slot), ((count // STAGES) & 1) ^ 1)
            ready = ready_bars.index(slot)
            mbarrier.expect(ready, step_bytes)
            tma.async_copy_global_to_shared(x_desc, [pid_m * BLOCK_M, k], ready, x_bufs.index(slot))
            tma.async_copy_global_to_shared(w_desc, [pid_n * BLOCK_N, k], ready, g_bufs.index(slot))
            tma.async_copy_global_to_shared(w_desc, [width + pid_n * BLOCK_N, k], ready, u_bufs.index(slot))
            count += 1


@gluon.jit
def _consumer(out_desc, bias_ptr, x_bufs, g_bufs, u_bufs, out_smem, ready_bars, empty_bars, num_rows, width,
              K_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
              GROUP_M: gl.constexpr, STAGES: gl.constexpr, HAS_BIAS: gl.constexpr, num_warps: gl.constexpr):
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                     instr_shape=[16, BLOCK_N, 16])
    num_m = gl.cdiv(num_rows, BLOCK_M)
    num_n = gl.cdiv(width, BLOCK_N)
    count = 0
    for tile in range(gl.program_id(0), num_m * num_n, gl.num_programs(0)):
        pid_m, pid_n = _tile_coords(tile, num_m, num_n, GROUP_M)
        acc_g = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout)
        acc_u = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout)
        for k in gl.static_range(0, K_DIM, BLOCK_K):
            slot = count % STAGES
            mbarrier.wait(ready_bars.index(slot), (count // STAGES) & 1)
            x = x_bufs.index(slot)
            acc_g = warpgroup_mma(x, g_bufs.index(slot).permute((1, 0)), acc_g, is_async=True)
            acc_u = warpgroup_mma(x, u_bufs.index(slot).permute((1, 0)), acc_u, is_async=True)
            # one K-step in flight: the previous step's matmuls are done, so its slot can be refilled
            acc_g, acc_u = warpgroup_mma_wait(2, deps=[acc_g, acc_u])
            if k > 0:
                mbarrier.arrive(empty_bars.index((count + STAGES - 1) % STAGES), count=1)
            count += 1
        acc_g, acc_u = warpgroup_mma_wait(0, deps=[acc_g, acc_u])
        mbarrier.arrive(empty_bars.index((count + STAGES - 1) % STAGES), count=1)
        result = _swiglu_epilogue(acc_g, acc_u, bias_ptr, pid_n * BLOCK_N, width, out_desc.dtype, BLOCK_N, HAS_BIAS)
        tma.store_wait(0)  # the previous tile's store has read out_smem
        out_smem.store(result)
        fence_async_shared()
        tma.async_copy_shared_to_global(out_desc, [pid_m * BLOCK_M, pid_n * BLOCK_N], out_smem)
    tma.store_wait(0)


@gluon.jit
def _swiglu_epilogue(acc_g, acc_u, bias_ptr, first_col, width, dtype: gl.constexpr, BLOCK_N: gl.constexpr,
                     HAS_BIAS: gl.constexpr):
    """bf16(bf16(silu(bf16(g + b_g))) * bf16(u + b_u)): HF's roundings after each projection, silu and product."""
    if HAS_BIAS:
        cols = first_col + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, acc_g.type.layout))
        col_ok = cols < width
        acc_g += gl.expand_dims(gl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(gl.float32), 0)
        acc_u += gl.expand_dims(gl.load(bias_ptr + width + cols, mask=col_ok, other=0.0).to(gl.float32), 0)
    gate = acc_g.to(dtype).to(gl.float32)
    silu = (gate / (1.0 + gl.exp(-gate))).to(dtype).to(gl.float32)
    return (silu * acc_u.to(dtype).to(gl.float32)).to(dtype)


@gluon.jit
def _swiglu_gemm_sm90_kernel(x_desc, w_desc, out_desc, bias_ptr, num_rows, width,
                             K_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                             BLOCK_K: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr,
                             HAS_BIAS: gl.constexpr, num_warps: gl.constexpr):
    dtype: gl.constexpr = x_desc.dtype
    x_bufs = gl.allocate_shared_memory(dtype, [STAGES] + x_desc.block_type.shape, x_desc.layout)
    g_bufs = gl.allocate_shared_memory(dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
    u_bufs = gl.allocate_shared_memory(dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
    out_smem = gl.allocate_shared_memory(dtype, out_desc.block_type.shape, out_desc.layout)
    ready_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for slot in gl.static_range(STAGES):
        mbarrier.init(ready_bars.index(slot), count=1)
        mbarrier.init(empty_bars.index(slot), count=1)
    gl.warp_specialize([
        (_consumer, (out_desc, bias_ptr, x_bufs, g_bufs, u_bufs, out_smem, ready_bars, empty_bars, num_rows, width,
                     K_DIM, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, STAGES, HAS_BIAS, num_warps)),
        (_producer, (x_desc, w_desc, x_bufs, g_bufs, u_bufs, ready_bars, empty_bars, num_rows, width,
                     K_DIM, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, STAGES)),
    ], [1], [_PRODUCER_REGISTERS])


_GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}


def supports(x: torch.Tensor, weight: torch.Tensor, width: int) -> bool:
    """CUDA sm_90, fp16/bf16, and rows that TMA can read and write (16-byte aligned K and W)."""
    return (x.is_cuda and torch.cuda.get_device_capability(x.device) == (9, 0) and x.dtype in _GL_DTYPES
            and weight.dtype == x.dtype and (x.shape[-1] * x.element_size()) % 16 == 0
            and (width * x.element_size()) % 16 == 0)


def swiglu_gemm_sm90(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], width: int,
                     out: Optional[torch.Tensor] = None, config: Optional[Config] = None) -> torch.Tensor:
    """silu(x W[:width]^T + b[:width]) * (x W[width:]^T + b[width:]): x `[N, K]`, weight `[2W, K]` (gate rows then
    up rows), bias `[2W]` or None -> `[N, W]` (the contract of `swiglu_gemm.swiglu_gemm`; W * 2 bytes must be a
    multiple of 16 for the TMA store)."""
    num_rows, k_dim = x.shape
    if weight.shape != (2 * width, k_dim) or not supports(x, weight, width):
        raise ValueError(f"want x [N, K], weight [2 * {width}, K] of one half dtype on an sm_90 GPU, K and W "
                         f"16-byte aligned; got {tuple(x.shape)} {x.dtype}, {tuple(weight.shape)} {weight.dtype}")
    x, weight = x.contiguous(), weight.contiguous()
    config = config or DEFAULT_CONFIG
    if out is None:
        out = torch.empty(num_rows, width, dtype=x.dtype, device=x.device)
    dtype = _GL_DTYPES[x.dtype]
    x_desc = TensorDescriptor(x, [num_rows, k_dim], [k_dim, 1], [config.block_m, config.block_k],
                              gl.NVMMASharedLayout.get_default_for([config.block_m, config.block_k], dtype))
    w_desc = TensorDescriptor(weight, [2 * width, k_dim], [k_dim, 1], [config.block_n, config.block_k],
                              gl.NVMMASharedLayout.get_default_for([config.block_n, config.block_k], dtype))
    out_desc = TensorDescriptor(out, [num_rows, width], [out.stride(0), 1], [config.block_m, config.block_n],
                                gl.NVMMASharedLayout.get_default_for([config.block_m, config.block_n], dtype))
    num_tiles = triton.cdiv(num_rows, config.block_m) * triton.cdiv(width, config.block_n)
    num_sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    _swiglu_gemm_sm90_kernel[(min(num_tiles, num_sms),)](x_desc, w_desc, out_desc, bias, num_rows, width,
                                                         **launch_options(config, k_dim, bias is not None))
    return out


def launch_options(config: Config, k_dim: int, has_bias: bool) -> dict:
    """The kernel's compile-time constants, num_warps and maxnreg (one CTA per SM: the consumer warps plus
    the producer's warpgroup share the 64K registers)."""
    max_registers = min(255, 65536 // ((config.num_warps + 4) * 32)) // 8 * 8
    return dict(K_DIM=k_dim, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                GROUP_M=config.group_m, STAGES=config.num_stages, HAS_BIAS=has_bias, num_warps=config.num_warps,
                maxnreg=max_registers)


SWEEP_CONFIGS = (Config(128, 128, 64, 8, 4, 8), Config(128, 128, 64, 8, 3, 8), Config(128, 128, 64, 4, 4, 8),
                 Config(128, 64, 64, 8, 6, 8))


if __name__ == "__main__":
    import functools

    from spava_kernels.sweep import swiglu_sweep_args
    from spava_kernels.swiglu_gemm import swiglu_gemm, sweep

    sweep(*swiglu_sweep_args("Sweep launch configs of the Gluon SwiGLU GEMM (sm_90)"),
          [("triton default", swiglu_gemm)]
          + [(f"gluon {tuple(c)}", functools.partial(swiglu_gemm_sm90, config=c)) for c in SWEEP_CONFIGS])
