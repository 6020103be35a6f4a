"""Triton LSE merge of two partial attention results, written straight into its destination.

The torch merge (`spava.attention.merge`) copies piece a into a float32 accumulator and then runs
about eight elementwise kernels over float32 `[S, H, D]` tensors. This kernel reads both pieces
once, merges in float32 registers and writes the result once, in the destination's dtype, into any
strided view (e.g. a bf16 row slice of the layer output), so no accumulator and no extra copy.

Rule for empty pieces (lse = -inf, a piece that saw no key for a row): the merged row is the other
piece, output and lse, whatever the empty piece's output holds (NaN included); when both are empty
the row is piece a. Finite rows use spava's log-sigmoid form:

    o = o_a + sigmoid(l_b - l_a) * (o_b - o_a)
    l = max(l_a, l_b) + log(1 + exp(-|l_a - l_b|))

Importing this module imports Triton; `spava_kernels.dispatch` imports it only when needed.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

# Elements of one program's tile: 16 rows of D = 128 (16 values per thread with 4 warps, i.e. two
# 16-byte loads per thread and tensor in bf16), enough in flight for a purely memory-bound kernel.
_TILE_ELEMENTS = 2048


@triton.jit
def _merge_kernel(
    a_ptr, la_ptr, b_ptr, lb_ptr, o_ptr, lo_ptr,
    num_rows, num_heads, dim,
    a_ss, a_sh, a_sd, b_ss, b_sh, b_sd, o_ss, o_sh, o_sd,
    la_ss, la_sh, lb_ss, lb_sh, lo_ss, lo_sh,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # One program merges BLOCK_R (token, head) rows; rows are flattened so that any H fills a tile.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < num_rows
    token = (rows // num_heads).to(tl.int64)  # int64: token * stride may pass 2**31 in big buffers
    head = (rows % num_heads).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    tile_ok = row_ok[:, None] & (cols < dim)[None, :]

    lse_a = tl.load(la_ptr + token * la_ss + head * la_sh, mask=row_ok, other=0.0).to(tl.float32)
    lse_b = tl.load(lb_ptr + token * lb_ss + head * lb_sh, mask=row_ok, other=0.0).to(tl.float32)
    a_empty = lse_a == float("-inf")
    b_empty = lse_b == float("-inf")
    either = a_empty | b_empty  # zero both before subtracting: no inf - inf, no NaN
    diff = tl.where(either, 0.0, lse_b) - tl.where(either, 0.0, lse_a)
    weight_b = tl.sigmoid(diff)
    lse = tl.maximum(lse_a, lse_b) + tl.log(1.0 + tl.exp(-tl.abs(diff)))
    lse = tl.where(b_empty, lse_a, tl.where(a_empty, lse_b, lse))

    a_offs = (token * a_ss + head * a_sh)[:, None] + cols[None, :] * a_sd
    b_offs = (token * b_ss + head * b_sh)[:, None] + cols[None, :] * b_sd
    out_a = tl.load(a_ptr + a_offs, mask=tile_ok, other=0.0).to(tl.float32)
    out_b = tl.load(b_ptr + b_offs, mask=tile_ok, other=0.0).to(tl.float32)
    merged = out_a + weight_b[:, None] * (out_b - out_a)
    # where, not arithmetic: the empty piece's output may be garbage (0 * NaN is NaN)
    merged = tl.where(b_empty[:, None], out_a, tl.where(a_empty[:, None], out_b, merged))

    o_offs = (token * o_ss + head * o_sh)[:, None] + cols[None, :] * o_sd
    tl.store(o_ptr + o_offs, merged.to(o_ptr.dtype.element_ty), mask=tile_ok)
    tl.store(lo_ptr + token * lo_ss + head * lo_sh, lse.to(lo_ptr.dtype.element_ty), mask=row_ok)


def merge_two(
    out_a: torch.Tensor,
    lse_a: torch.Tensor,
    out_b: torch.Tensor,
    lse_b: torch.Tensor,
    out: Optional[torch.Tensor] = None,
    lse_out: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LSE merge of two partials in one kernel (Triton); see `spava_kernels.reference.merge_two`.

    Args:
        out_a, out_b: `[S, H, D]` partial outputs, any float dtype, any strides.
        lse_a, lse_b: `[S, H]` log-sum-exps, any strides (float32 expected; read as float32).
        out: `[S, H, D]` destination, any float dtype and strides; may be out_a itself (each element
            is read before it is written, by the same program). None: new, out_a's dtype.
        lse_out: `[S, H]` destination of the merged lse; may be lse_a. None: new float32.

    Returns:
        (out, lse_out). Arithmetic is float32 for every dtype (float64 inputs too).
    """
    num_tokens, num_heads, dim = out_a.shape
    _check_shapes(out_a, lse_a, out_b, lse_b)
    if out is None:
        out = torch.empty_like(out_a, memory_format=torch.contiguous_format)
    if lse_out is None:
        lse_out = torch.empty((num_tokens, num_heads), dtype=torch.float32, device=out_a.device)
    if out.shape != out_a.shape or lse_out.shape != lse_a.shape:
        raise ValueError(f"destinations {tuple(out.shape)}, {tuple(lse_out.shape)} do not fit {tuple(out_a.shape)}")
    num_rows = num_tokens * num_heads
    if num_rows == 0 or dim == 0:
        return out, lse_out
    block_d = triton.next_power_of_2(dim)
    block_r = max(1, _TILE_ELEMENTS // block_d)
    grid = (triton.cdiv(num_rows, block_r),)
    _merge_kernel[grid](
        out_a, lse_a, out_b, lse_b, out, lse_out,
        num_rows, num_heads, dim,
        *out_a.stride(), *out_b.stride(), *out.stride(),
        *lse_a.stride(), *lse_b.stride(), *lse_out.stride(),
        BLOCK_R=block_r, BLOCK_D=block_d, num_warps=4,
    )
    return out, lse_out


def merge_into_(acc_out: torch.Tensor, acc_lse: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> None:
    """Fold (out_b `[S,H,D]`, lse_b `[S,H]`) into the accumulator (acc_out, acc_lse), in place."""
    merge_two(acc_out, acc_lse, out_b, lse_b, out=acc_out, lse_out=acc_lse)


def _check_shapes(out_a, lse_a, out_b, lse_b) -> None:
    if out_a.dim() != 3 or out_b.shape != out_a.shape or lse_a.shape != out_a.shape[:2] or lse_b.shape != lse_a.shape:
        raise ValueError(
            f"merge_two wants out [S, H, D] and lse [S, H] pairs of one shape; got {tuple(out_a.shape)}, "
            f"{tuple(lse_a.shape)}, {tuple(out_b.shape)}, {tuple(lse_b.shape)}"
        )
