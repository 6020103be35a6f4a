"""GPU checks (skipped without CUDA): attention backends and every method over NCCL.

Tolerance rule (flash-attention's): max error against a float32/64 reference <= 2x the error of
plain torch math in the same dtype, on irregular shapes.
"""

from __future__ import annotations

import pytest
import torch

from spava.attention.backend import get_backend

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _qkv(num_q, num_k, heads, kv_heads, dim, dtype, seed=0):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    make = lambda n, h: torch.randn(n, h, dim, device="cuda", dtype=torch.float32, generator=generator)  # noqa: E731
    return make(num_q, heads).to(dtype), make(num_k, kv_heads).to(dtype), make(num_k, kv_heads).to(dtype)


@pytest.mark.parametrize("backend", ["torch_cuda", "flash_attn"])
@pytest.mark.parametrize("num_q,num_k,is_causal", [(113, 203, True), (203, 203, True), (1, 977, True), (77, 301, False)])
@pytest.mark.parametrize("heads", [(28, 4), (16, 2), (8, 8)])
def test_cuda_backend_matches_reference(backend, num_q, num_k, is_causal, heads):
    if backend == "flash_attn":
        pytest.importorskip("flash_attn")
    q, k, v = _qkv(num_q, num_k, *heads, 128, torch.bfloat16)
    ref_out, ref_lse = get_backend("math").attend(q.double(), k.double(), v.double(), is_causal=is_causal)
    same_dtype, _ = get_backend("math").attend(q, k, v, is_causal=is_causal)
    out, lse = get_backend(backend).attend(q, k, v, is_causal=is_causal)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    torch_error = (same_dtype.double() - ref_out).abs().max()
    assert (out.double() - ref_out).abs().max() <= 2 * torch_error + 1e-6
    assert (lse.double() - ref_lse).abs().max() < 1e-3, "LSE must be the natural-log log-sum-exp"


@pytest.mark.parametrize("num_q,num_k,is_causal", [(113, 203, True), (203, 203, True), (1, 977, True), (77, 301, False)])
def test_torch_cuda_backend_in_float32(num_q, num_k, is_causal):
    """float32 (which cuDNN and FA2 do not compute) goes to the memory-efficient kernel: output and LSE
    against float64 within float32 accumulation error (TF32 is off for it)."""
    q, k, v = _qkv(num_q, num_k, 28, 4, 128, torch.float32)
    ref_out, ref_lse = get_backend("math").attend(q.double(), k.double(), v.double(), is_causal=is_causal)
    out, lse = get_backend("torch_cuda").attend(q, k, v, is_causal=is_causal)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    assert (out.double() - ref_out).abs().max() < 1e-4
    assert (lse.double() - ref_lse).abs().max() < 1e-4


def _methods_over_nccl(rank, world_size):
    from spava.attention.config import AttentionConfig
    from spava.attention.registry import get_method
    from spava.comm.collectives import SPComm

    torch.cuda.set_device(rank)
    q, k, v = _qkv(3001, 3001, 28, 4, 128, torch.bfloat16, seed=1)
    ref, _ = get_backend("math").attend(q.float(), k.float(), v.float(), is_causal=True)
    same_dtype, _ = get_backend("math").attend(q, k, v, is_causal=True)
    tolerance = 2 * float((same_dtype.float() - ref).abs().max()) + 1e-3
    full_budget = dict(anchor_len=64, passing_len=10**6, round_to=1)
    for name, cfg, rows in [("ring", {}, "all"), ("zigzag_ring", {}, "all"), ("ulysses", {}, "all"),
                            ("star", {}, "query"), ("apb", full_budget, "all"), ("spava", full_budget, "all"),
                            ("spava", {}, "query")]:
        method = get_method(AttentionConfig(method=name, **cfg))
        plan = method.plan(3001, 17, world_size, rank)
        out = method.forward(*(plan.slice_local(x) for x in (q, k, v)), method.context(plan, SPComm(), "cuda"))
        expected = plan.slice_local(ref)
        got, want = (out[-17:], expected[-17:]) if rows == "query" else (out, expected)
        error = float((got.float() - want).abs().max())
        assert error <= tolerance, f"{name} {cfg}: {error} > {tolerance}"


def test_every_method_over_nccl_matches_dense_attention():
    import os

    import torch.multiprocessing as mp

    from spava.runtime.launch import free_port

    world_size = torch.cuda.device_count()
    if world_size < 2:
        pytest.skip("needs 2 or more GPUs")
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    mp.start_processes(_nccl_entry, args=(world_size, free_port()), nprocs=world_size, start_method="spawn")


def _nccl_entry(rank, world_size, port):
    import torch.distributed as dist

    from spava.comm.collectives import end_spawned_rank

    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    _methods_over_nccl(rank, world_size)
    end_spawned_rank()
