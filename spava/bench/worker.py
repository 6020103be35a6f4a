"""The benchmark's per-rank entry point (spawned by `spava bench`, one process per device)."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

from spava.bench.flops import llm_prefill_flops, model_vision_flops
from spava.bench.harness import (
    BenchSpec, PhaseTimer, TimedEncoder, _first_token, _hf_first_token, _runner, _sum_over, instrument,
    matmul_tflops, measure, profile_once,
)
from spava.bench.inputs import make_inputs
from spava.comm.collectives import SPComm, end_spawned_rank, new_group
from spava.config import ModelConfig
from spava.models.family import get_family
from spava.models.vision_parallel import assign_units, plan_vision_units


def _build_model(spec: BenchSpec, device: str):
    """(family, adapter on `device`): random weights of `spec.size`, or the checkpoint `spec.model_path`."""
    config = ModelConfig(family=spec.model, path=spec.model_path, size=spec.size, dtype=spec.dtype,
                         vision_impl=spec.encoder)
    family = get_family(config)
    if family.vision_spec() is None:
        raise ValueError(f"spava bench measures video requests; the {family.name} family has no vision tower")
    return family, family.build(("vision", "text"), device)


def _rank_flops(runner, inputs, case, adapter, world_size: int, rank: int) -> float:
    plan = runner.method.plan(inputs.num_tokens, inputs.num_query_tokens, world_size, rank)
    units = plan_vision_units(inputs.grid_thw, adapter.vision_spec.merge_size)
    start, stop = assign_units(units, world_size)[rank]
    cfg = adapter.config
    return llm_prefill_flops(runner.method, plan, cfg.text_config) + model_vision_flops(
        cfg, case.grid_thw(adapter.vision_spec), stop - start)


def _record(handle, entry: dict) -> None:
    handle.write(json.dumps(entry) + "\n")
    handle.flush()


def _run_single(spec, name, adapter, inputs, case, device, timer, rate, group):
    """full / hf on rank 0 alone (`group` holds rank 0 only)."""
    runner = _runner(adapter, spec, "full", SPComm.single())
    if name == "hf":
        if inputs.num_tokens > spec.hf_max_tokens:
            return {"skipped": f"over --hf-max-tokens={spec.hf_max_tokens}"}
        result = measure(lambda: _hf_first_token(adapter, inputs), spec, device, group, timer)
    else:
        result = measure(lambda: _first_token(runner, inputs), spec, device, group, timer)
    flops = _rank_flops(runner, inputs, case, adapter, 1, 0)
    return {**result, "flops": flops, "tflops_per_gpu": flops / result["seconds"] / 1e12,
            "roofline": flops / (rate * 1e12) / result["seconds"]}


def _run_parallel(spec, name, adapter, inputs, case, device, timer, rate, group, world_size, rank):
    runner = _runner(adapter, spec, name, SPComm(group))
    phases = PhaseTimer(device)
    instrument(runner, phases)
    result = measure(lambda: _first_token(runner, inputs), spec, device, group, timer)
    result["phases_s"] = {k: v / (spec.repeats + spec.warmup) for k, v in phases.seconds.items()}
    if spec.profile_dir:
        path = os.path.join(spec.profile_dir, f"profile_{name}_w{world_size}_r{rank}.txt")
        trace = path.replace(".txt", ".json.gz") if rank == 1 else ""
        profile_once(lambda: _first_token(runner, inputs), device, path, trace)
    flops = _sum_over(group, _rank_flops(runner, inputs, case, adapter, world_size, rank), device)
    return {**result, "flops": flops, "tflops_per_gpu": flops / world_size / result["seconds"] / 1e12,
            "roofline": flops / (world_size * rate * 1e12) / result["seconds"]}


def _case_entries(spec, adapter, processor, case, device, timer, rate, groups, rank):
    """Every method of one case on the ranks it needs; yields result entries (rank 0 records them)."""
    inputs = make_inputs(case, processor, adapter.vision_spec, device=device)
    base = {"case": case.label, "resolution": case.resolution, "frames": case.num_frames,
            "num_tokens": inputs.num_tokens, "size": spec.size, "model": spec.model}
    for name in spec.methods:
        sizes = [1] if name in ("full", "hf") else spec.world_sizes
        for world_size in sizes:
            entry = {**base, "method": name, "world_size": world_size}
            if rank < world_size:
                try:
                    if world_size == 1:
                        entry.update(_run_single(spec, name, adapter, inputs, case, device, timer, rate, groups[1]))
                    else:
                        entry.update(_run_parallel(spec, name, adapter, inputs, case, device, timer, rate,
                                                   groups[world_size], world_size, rank))
                except torch.cuda.OutOfMemoryError:
                    entry["skipped"] = "out of memory"
                    torch.cuda.empty_cache()
            dist.barrier()
            yield entry


def bench_rank(rank: int, world_size: int, spec: BenchSpec, init_method: str, out_path: str) -> None:
    device = f"cuda:{rank}" if spec.device == "cuda" else "cpu"
    backend = "nccl" if spec.device == "cuda" else "gloo"
    # W processes each with one OpenMP thread per core oversubscribe the host: every small CPU op
    # then spins for milliseconds and kernel launches starve (seen on 4xH200: 7.7 s of host time
    # for 2.3 s of GPU work). A few threads per rank is plenty for a GPU process.
    torch.set_num_threads(max(1, min(8, (os.cpu_count() or 1) // world_size)))
    if spec.device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)

    groups = {size: new_group(list(range(size))) for size in sorted({1, *spec.world_sizes})}
    family, adapter = _build_model(spec, device)
    processor = family.processor()
    timer = TimedEncoder(adapter.encode, device)
    adapter.encode = timer
    rate = matmul_tflops(device)
    handle = open(out_path, "a") if rank == 0 else None
    if handle:
        _record(handle, {"matmul_tflops": rate, "device": torch.cuda.get_device_name() if spec.device == "cuda"
                         else "cpu", "torch": torch.__version__, "spec": {k: str(v) for k, v in vars(spec).items()}})
    for case in spec.cases:
        for entry in _case_entries(spec, adapter, processor, case, device, timer, rate, groups, rank):
            if handle:
                _record(handle, entry)
    if handle:
        handle.close()
    end_spawned_rank()
