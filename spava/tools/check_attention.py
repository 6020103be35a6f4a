"""`spava check-attention`: run every attention method on W local CPU ranks and compare with `full`.

A self-contained health check of the sequence-parallel core on any machine (gloo, no GPU): it
spawns W processes, runs each method on the same random Q/K/V, and prints the max error of every
method against dense attention, split into context rows and query rows, plus the wall time.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spava.attention.backend import get_backend
from spava.attention.config import AttentionConfig
from spava.attention.full import FullAttention
from spava.attention.registry import available_methods, exact_methods, get_method
from spava.comm.collectives import SPComm, end_spawned_rank


@dataclass(frozen=True)
class CheckSpec:
    """Problem size of the check (defaults: a 4K-token prompt, GQA 8/2 heads)."""

    num_tokens: int = 4096
    num_query_tokens: int = 16
    num_heads: int = 8
    num_kv_heads: int = 2
    head_dim: int = 64
    world_size: int = 2
    seed: int = 0


def sequence_parallel_methods() -> list[str]:
    """Every named method but `full`, the one-rank dense reference the others are compared with."""
    return [name for name in available_methods() if name != FullAttention.name]


def _errors(out, ref, num_query) -> tuple[float, float]:
    diff = (out.double() - ref).abs()
    return float(diff[:-num_query].max()), float(diff[-num_query:].max())


def _worker(rank: int, spec: CheckSpec, init_file: str, result_dir: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.world_size))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=spec.world_size)
    generator = torch.Generator().manual_seed(spec.seed)
    shapes = [(spec.num_tokens, h, spec.head_dim) for h in (spec.num_heads, spec.num_kv_heads, spec.num_kv_heads)]
    q, k, v = (torch.randn(s, generator=generator) for s in shapes)
    ref, _ = get_backend("torch_cpu").attend(q.double(), k.double(), v.double(), is_causal=True)
    lines = []
    for name in sequence_parallel_methods():
        method = get_method(AttentionConfig(method=name, backend="torch_cpu"))
        plan = method.plan(spec.num_tokens, spec.num_query_tokens, spec.world_size, rank)
        ctx = method.context(plan, SPComm())
        local = [plan.slice_local(x) for x in (q, k, v)]
        dist.barrier()
        start = time.perf_counter()
        out = method.forward(*local, ctx)
        elapsed = time.perf_counter() - start
        context_error, query_error = _errors(out, plan.slice_local(ref), spec.num_query_tokens)
        lines.append(f"{name} {context_error} {query_error} {elapsed}")
    with open(os.path.join(result_dir, f"rank{rank}"), "w") as handle:
        handle.write("\n".join(lines))
    end_spawned_rank()


def run_check(spec: CheckSpec) -> list[tuple[str, float, float, float]]:
    """Spawn W ranks; return (method, max context-row error, max query-row error, max time s)."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(spec, os.path.join(tmp, "init"), tmp), nprocs=spec.world_size,
                           start_method="spawn")
        per_rank = [open(os.path.join(tmp, f"rank{r}")).read().split("\n") for r in range(spec.world_size)]
    rows = []
    for lines in zip(*per_rank):
        fields = [line.split() for line in lines]
        rows.append((fields[0][0], *(max(float(f[i]) for f in fields) for i in (1, 2, 3))))
    return rows


def format_table(spec: CheckSpec, rows) -> str:
    exact = set(exact_methods())
    header = (f"attention check: N={spec.num_tokens} (query {spec.num_query_tokens}), heads {spec.num_heads}/"
              f"{spec.num_kv_heads}, head_dim {spec.head_dim}, W={spec.world_size} CPU ranks (gloo), float32\n")
    lines = [header, f"{'method':<12} {'kind':<7} {'context err':>12} {'query err':>10} {'time s':>8}"]
    for name, context_error, query_error, elapsed in rows:
        kind = "exact" if name in exact else "approx"
        lines.append(f"{name:<12} {kind:<7} {context_error:>12.2e} {query_error:>10.2e} {elapsed:>8.3f}")
    lines.append("\nexact methods and every query row should be ~1e-6 (float32); approx context rows are "
                 "approximate by design.")
    return "\n".join(lines)
