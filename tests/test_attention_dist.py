"""Every attention method on W gloo ranks against single-process dense attention (float64 reference).

Checked: exact methods (ring, zigzag_ring, ulysses) on all rows; the query rows of star / apb / spava;
apb and spava with a passing budget covering whole chunks on all rows; decoding over the distributed
KV cache. The context rows of partial budgets (what makes the methods approximate) are checked in
`test_attention_selection.py`. One spawn per world size; every case runs inside it.
"""

from __future__ import annotations

import pytest
import torch

from spava.attention.backend import get_backend
from spava.attention.config import AttentionConfig
from spava.attention.exact import decode_attention
from spava.attention.registry import exact_methods, get_method
from spava.comm.collectives import SPComm

SHAPES = [(203, 7, 8, 2), (331, 13, 6, 3)]  # (num_tokens, num_query_tokens, Hq, Hkv)
HEAD_DIM = 64
EXACT = [name for name in exact_methods() if name != "full"]  # full runs on one rank only
FULL_BUDGET = dict(anchor_len=16, passing_len=10**6, round_to=1)
APPROX_CONFIGS = [
    ("star", {}, False),
    ("apb", dict(anchor_len=16, passing_len=8, round_to=1), False),
    ("spava", dict(anchor_len=16, passing_len=8, round_to=1), False),
    ("apb", FULL_BUDGET, True),
    ("spava", FULL_BUDGET, True),
    ("spava", dict(anchor_len=0, passing_len=10**6, round_to=1, scorer="key_norm"), True),
]


def _inputs(num_tokens, num_heads, num_kv_heads, seed):
    generator = torch.Generator().manual_seed(seed)
    shape_q, shape_kv = (num_tokens, num_heads, HEAD_DIM), (num_tokens, num_kv_heads, HEAD_DIM)
    return tuple(torch.randn(s, generator=generator, dtype=torch.float64) for s in (shape_q, shape_kv, shape_kv))


FLOAT64_TOL = 1e-12  # measured max error 2.2e-15 (N <= 331 keys)
FLOAT32_DECODE_TOL = 1e-6  # measured max error 1.8e-7: LSE merge of float32 partials, outputs of size ~1


def _tolerance(dtype, q, k, v, ref) -> float:
    """float64: FLOAT64_TOL. Lower precision: 2x the error of plain torch math in that dtype (flash-attn's rule)."""
    if dtype == torch.float64:
        return FLOAT64_TOL
    same_dtype, _ = get_backend("math").attend(*(x.to(dtype) for x in (q, k, v)), is_causal=True)
    return 2 * float((same_dtype.double() - ref).abs().max()) + 1e-6


def _check(name, got, want, tolerance, failures):
    error = float((got.double() - want).abs().max()) if got.numel() else 0.0
    if not error <= tolerance:
        failures.append(f"{name}: max error {error:.3e} > {tolerance:.3e}")


def _run_prefill(method_name, cfg, q, k, v, num_query, world_size, rank, dtype):
    method = get_method(AttentionConfig(method=method_name, backend="torch_cpu", **cfg))
    plan = method.plan(q.shape[0], num_query, world_size, rank)
    ctx = method.context(plan, SPComm())
    local = [plan.slice_local(x).to(dtype) for x in (q, k, v)]
    return plan, ctx, method.forward(*local, ctx, layer_idx=0)


def _check_decode(plan, ctx, q, k, v, dtype, ref_backend, failures, tag):
    """Cache = owned K/V; 3 new tokens appended on the decode rank; compare with dense attention."""
    num_new = 3
    new_q, new_k, new_v = (x[-num_new:] for x in _inputs(num_new, q.shape[1], k.shape[1], seed=99))
    all_k, all_v = torch.cat([k, new_k]), torch.cat([v, new_v])
    ids = plan.local_token_ids()
    cache_ids = torch.cat([ids[a:b] for a, b in plan.owned_local_ranges()])
    if plan.rank == plan.decode_rank:
        cache_ids = torch.cat([cache_ids, torch.arange(q.shape[0], q.shape[0] + num_new)])
    out = decode_attention(new_q.to(dtype), all_k[cache_ids].to(dtype), all_v[cache_ids].to(dtype), ctx.comm,
                           ctx.backend, is_causal=plan.rank == plan.decode_rank)
    ref, _ = ref_backend.attend(new_q, all_k, all_v, is_causal=True)
    tolerance = FLOAT64_TOL if dtype == torch.float64 else FLOAT32_DECODE_TOL
    _check(f"{tag} decode", out, ref, tolerance, failures)


def _cases(rank, world_size):
    failures: list[str] = []
    math_backend = get_backend("math")
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        for seed, (num_tokens, num_query, num_heads, num_kv_heads) in enumerate(SHAPES):
            q, k, v = _inputs(num_tokens, num_heads, num_kv_heads, seed)
            ref, _ = math_backend.attend(q, k, v, is_causal=True)
            tolerance = _tolerance(dtype, q, k, v, ref)
            for name in EXACT:
                tag = f"{name} W={world_size} rank={rank} {dtype} N={num_tokens}"
                plan, ctx, out = _run_prefill(name, {}, q, k, v, num_query, world_size, rank, dtype)
                _check(tag, out, plan.slice_local(ref), tolerance, failures)
                if dtype != torch.bfloat16:
                    _check_decode(plan, ctx, q, k, v, dtype, math_backend, failures, tag)
            for name, cfg, is_full_budget in APPROX_CONFIGS:
                tag = f"{name} {cfg} W={world_size} rank={rank} {dtype} N={num_tokens}"
                plan, ctx, out = _run_prefill(name, cfg, q, k, v, num_query, world_size, rank, dtype)
                local_ref = plan.slice_local(ref)
                _check(tag + " query rows", out[-num_query:], local_ref[-num_query:], tolerance, failures)
                if is_full_budget:
                    _check(tag + " all rows", out, local_ref, tolerance, failures)
                if dtype == torch.float64:
                    _check_decode(plan, ctx, q, k, v, dtype, math_backend, failures, tag)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_methods_match_dense_attention(run_ranks, world_size):
    run_ranks(_cases, world_size, timeout=400)
