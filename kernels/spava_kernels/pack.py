"""Triton packing of the selected K/V rows into the (preallocated) communication buffer.

torch.gather needs an expanded `[n, Hkv, D]` int64 index (8x the bytes of the bf16 rows it moves)
and one launch for K and one for V. This kernel reads the `[n, Hkv]` index once and copies the K and
V rows of each (selection, head) pair in one launch, straight into strided views of the send buffer.

Importing this module imports Triton; `spava_kernels.dispatch` imports it only when needed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Selected rows per program: 32 rows x 128 dims x 2 tensors of bf16 = 16 KiB moved per program.
_TILE_ELEMENTS = 4096


@triton.jit
def _pack_kernel(
    k_ptr, v_ptr, idx_ptr, ok_ptr, ov_ptr,
    num_select, num_src, dim,
    k_ss, k_sh, k_sd, v_ss, v_sh, v_sd, i_ss, i_sh,
    ok_ss, ok_sh, ok_sd, ov_ss, ov_sh, ov_sd,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    head = tl.program_id(1).to(tl.int64)
    sel = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    sel_ok = sel < num_select
    sel = sel.to(tl.int64)
    src = tl.load(idx_ptr + sel * i_ss + head * i_sh, mask=sel_ok, other=0).to(tl.int64)
    # an index outside [0, S) never reads out of bounds: its row is written as zeros
    src_ok = sel_ok & (src >= 0) & (src < num_src)
    cols = tl.arange(0, BLOCK_D)
    col_ok = (cols < dim)[None, :]
    read_ok = src_ok[:, None] & col_ok
    write_ok = sel_ok[:, None] & col_ok

    keys = tl.load(k_ptr + (src * k_ss + head * k_sh)[:, None] + cols[None, :] * k_sd, mask=read_ok, other=0.0)
    tl.store(ok_ptr + (sel * ok_ss + head * ok_sh)[:, None] + cols[None, :] * ok_sd, keys, mask=write_ok)
    values = tl.load(v_ptr + (src * v_ss + head * v_sh)[:, None] + cols[None, :] * v_sd, mask=read_ok, other=0.0)
    tl.store(ov_ptr + (sel * ov_ss + head * ov_sh)[:, None] + cols[None, :] * ov_sd, values, mask=write_ok)


def pack_selected(
    k: torch.Tensor, v: torch.Tensor, index: torch.Tensor, out_k: torch.Tensor, out_v: torch.Tensor
) -> None:
    """out_k[i, h] = k[index[i, h], h] (same for v) for i < n, in one launch (Triton).

    Args:
        k, v: `[S, Hkv, D]` source keys/values, any strides.
        index: `[n, Hkv]` integer row indices in [0, S) (e.g. torch.topk's), any strides. A row
            whose index falls outside [0, S) is written as zeros (no out-of-bounds read; the torch
            reference raises instead).
        out_k, out_v: `[slot_len, Hkv, D]` destinations (slot_len >= n), k/v's dtype, any strides
            (views into a communication buffer); rows >= n are left untouched.
    """
    _check(k, v, index, out_k, out_v)
    num_select, num_kv_heads = index.shape
    dim = k.shape[-1]
    if num_select == 0 or num_kv_heads == 0 or dim == 0:
        return
    block_d = triton.next_power_of_2(dim)
    block_n = max(1, _TILE_ELEMENTS // (2 * block_d))
    grid = (triton.cdiv(num_select, block_n), num_kv_heads)
    _pack_kernel[grid](
        k, v, index, out_k, out_v,
        num_select, k.shape[0], dim,
        *k.stride(), *v.stride(), *index.stride(), *out_k.stride(), *out_v.stride(),
        BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4,
    )


def _check(k, v, index, out_k, out_v) -> None:
    if k.dim() != 3 or v.shape != k.shape or index.dim() != 2 or index.shape[1] != k.shape[1]:
        raise ValueError(f"pack_selected wants k, v [S, Hkv, D] and index [n, Hkv]; got {tuple(k.shape)}, "
                         f"{tuple(v.shape)}, {tuple(index.shape)}")
    for name, out, src in (("out_k", out_k, k), ("out_v", out_v, v)):
        if out.dim() != 3 or out.shape[1:] != src.shape[1:] or out.shape[0] < index.shape[0]:
            raise ValueError(f"{name} {tuple(out.shape)} cannot hold {index.shape[0]} rows of {tuple(src.shape[1:])}")
        if out.dtype != src.dtype:
            raise ValueError(f"{name} is {out.dtype} but its source is {src.dtype}")
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"index must be an integer tensor, got {index.dtype}")
