"""The one LSE merge of partial attention results, used by every combiner in spava.

A partial result over a key set K_i is (o_i, l_i) with l_i = log sum_{j in K_i} exp(s_j) and
o_i = sum_j softmax_i(s)_j v_j. Over the union of two disjoint key sets:

    l = log(exp(l_a) + exp(l_b))
    o = (exp(l_a) o_a + exp(l_b) o_b) / exp(l)

written in the numerically stable log-sigmoid form (no exp of large numbers):

    o = o_a - sigmoid(l_b - l_a) * (o_a - o_b)
    l = l_a - logsigmoid(l_a - l_b)

Accumulators are float32 (float64 when the inputs are float64). Both lse values must be finite:
every row that is merged must already have seen at least one key, which all callers guarantee by
starting an accumulator from a partial that covers all of its rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (reference runs); everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
        from spava_kernels.dispatch import merge_into_, use_triton  # lazy: imports Triton on first use

        if use_triton("auto", out, out_b, allow_float64=False):
            merge_into_(out, lse, out_b, lse_b)
            return
    merge_partials_torch_(out, lse, out_b, lse_b)


def merge_partials_torch_(out: torch.Tensor, lse: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor) -> None:
    """`merge_partials_` in plain torch (the reference)."""
    lse_b = lse_b.to(lse.dtype)
    weight_b = torch.sigmoid(lse_b - lse).unsqueeze(-1)
    out.sub_(weight_b * (out - out_b.to(out.dtype)))
    lse.sub_(F.logsigmoid(lse - lse_b))


def start_accumulator(out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh accumulator (out, lse) initialised from a partial that covers all of its rows."""
    acc_dtype = accumulator_dtype(out.dtype)
    return out.to(acc_dtype, copy=True), lse.to(acc_dtype, copy=True)


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
    from spava_kernels.dispatch import merge_two  # lazy: spava_kernels' reference imports this module

    return merge_two(out_a, lse_a, out_b, lse_b, out=out)[1]
