"""The LSE merge of partial attention results, as every combiner in spava calls it.

The rule (log-sigmoid form, float32 accumulators, empty pieces) and its torch implementation live in
`spava_kernels.reference`, the bottom layer; on CUDA the fused Triton kernels of
`spava_kernels.dispatch` run the same rule. This module picks one or the other.
"""

from __future__ import annotations

import torch
from spava_kernels.reference import accumulator_dtype, merge_partials_ as merge_partials_torch_, start_accumulator

__all__ = ["accumulator_dtype", "merge_partials_", "merge_partials_torch_", "merge_stacked", "merge_two_into",
           "start_accumulator"]


def merge_partials_(out: torch.Tensor, lse: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> None:
    """Fold partial (out_b, lse_b) into the accumulator (out, lse), in place.

    Args:
        out: accumulator `[S, H, D]` in `accumulator_dtype` (may be a row slice of a larger one).
        lse: accumulator `[S, H]`, same dtype as `out`.
        out_b: partial output `[S, H, D]`, any float dtype.
        lse_b: partial log-sum-exp `[S, H]`, any float dtype.
    On CUDA (float32 accumulators) this is one fused Triton kernel; `merge_partials_torch_` is the
    torch reference it is tested against.
    """
    if out.is_cuda and lse.dtype == torch.float32:
        from spava_kernels.dispatch import merge_into_, use_triton

        if use_triton("auto", out, out_b, allow_float64=False):
            merge_into_(out, lse, out_b, lse_b)
            return
    merge_partials_torch_(out, lse, out_b, lse_b)


def merge_stacked(outs: torch.Tensor, lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge W partials stacked on dim 0: outs `[W, S, H, D]`, lses `[W, S, H]` -> (`[S,H,D]`, `[S,H]`)."""
    out, lse = start_accumulator(outs[0], lses[0])
    for index in range(1, outs.shape[0]):
        merge_partials_(out, lse, outs[index], lses[index])
    return out, lse


def merge_two_into(out: torch.Tensor, out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                   lse_b: torch.Tensor) -> torch.Tensor:
    """Merge two partials and write the result into `out` (any float dtype; may alias out_a).

    Args:
        out: destination `[S, H, D]`, e.g. a bf16 row slice of the method's output (no extra copy).
        out_a, out_b: partial outputs `[S, H, D]`; lse_a, lse_b: `[S, H]`.
    Returns:
        the merged lse `[S, H]` in float32 (float64 for float64 inputs).
    On CUDA this is one fused Triton kernel (read both partials once, write once); elsewhere the
    torch reference, i.e. `start_accumulator` + `merge_partials_torch_` rounded once into `out`.
    """
    from spava_kernels.dispatch import merge_two

    return merge_two(out_a, lse_a, out_b, lse_b, out=out)[1]
