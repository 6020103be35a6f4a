"""spava_kernels: GPU kernels (Triton) with torch references; imported lazily by spava.

Importing this package imports neither torch nor Triton. The public functions (resolved on first
access, from `spava_kernels.dispatch`) run the Triton kernel when the tensors are on CUDA and Triton
is importable, else the torch reference in `spava_kernels.reference`, with the same semantics:

    merge_two(out_a, lse_a, out_b, lse_b, out=None, lse_out=None) -> (out, lse)   LSE merge
    merge_into_(acc_out, acc_lse, out_b, lse_b)                                   in-place merge
    score_and_pool(q_query, k, window) -> [S_out, Hkv] float32                    fused score + pool
    select_topk(pooled, num_select) -> [n, Hkv] int64                             torch.topk
    pack_selected(k, v, index, out_k, out_v)                                      K/V rows -> buffer
    select_into(scores, num_select, k, v, out_k, out_v)                           topk + pack
    window_attention(q, k, v, cu_seqlens, max_seqlen, scale=None, out=None, rotary=None) -> out
                                                             short packed seqs (ViT windows), rotary
    flash_attention(q, k, v, cu_seqlens, max_seqlen, scale=None, out=None) -> out  long packed seqs
    swiglu_gemm(x, weight, bias, width) -> [N, W]                                 gate/up GEMM + SwiGLU
    DecodeAttention(max_workspaces=8)(q, k_cache, v_cache, length, ...) -> (out, lse)
                                    split-KV decoding over a KV cache, workspaces kept per shape
    has_triton() -> bool

The functional decode_attention(q, k_cache, v_cache, length, *, ...) -> (out, lse) is
`spava_kernels.dispatch.decode_attention` (= `spava_kernels.decode_attention.decode_attention`): the
package attribute of that name is its module once imported, so it is not re-exported here.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = (
    "has_triton", "use_triton", "merge_two", "merge_into_", "score_and_pool", "select_topk",
    "pack_selected", "select_into", "window_attention", "window_attention_reference", "flash_attention",
    "swiglu_gemm", "DecodeAttention", "DecodeWorkspace",
)

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spava_kernels' has no attribute {name!r}")
    return getattr(importlib.import_module("spava_kernels.dispatch"), name)
