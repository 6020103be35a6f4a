"""The benchmark's per-rank entry point (spawned by `spava bench`, one process per device)."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist

from spava.bench.flops import llm_prefill_flops, vision_flops
from spava.bench.harness import (
    BenchSpec, PhaseTimer, TimedEncoder, _first_token, _hf_first_token, _runner, _sum_over, instrument,
    matmul_tflops, measure, profile_once,
)
from spava.bench.inputs import make_inputs
from spava.comm.collectives import SPComm, end_spawned_rank
from spava.models.vision_parallel import assign_units, plan_vision_units


def _build_adapter(spec: BenchSpec, device: str):
    from spava.models.loading import torch_dtype

    if spec.model_path is not None:
        from spava.config import ModelConfig
        from spava.models.loading import build_adapter

        return build_adapter(ModelConfig(path=spec.model_path, dtype=spec.dtype, vision_impl=spec.encoder),
                             ("vision", "text"), device)
    if spec.family == "internvl":
        from spava.models.internvl.bench import build_random

        return build_random(spec.size, torch_dtype(spec.dtype), device)
    from spava.models.qwen2_5_vl.model import Qwen25VL
    from spava.models.qwen2_5_vl.presets import qwen2_5_vl_config

    return Qwen25VL.from_config(qwen2_5_vl_config(spec.size), dtype=torch_dtype(spec.dtype), device=device,
                                vision_impl=spec.encoder)


def _rank_flops(runner, inputs, case, adapter, world_size: int, rank: int) -> float:
    plan = runner.method.plan(inputs.num_tokens, inputs.num_query_tokens, world_size, rank)
    units = plan_vision_units(inputs.grid_thw, adapter.vision_spec.merge_size)
    start, stop = assign_units(units, world_size)[rank]
    cfg = adapter.config
    if _is_internvl(adapter):
        from spava.models.internvl.bench import vision_flops as internvl_vision_flops

        vision = internvl_vision_flops(cfg.vision_config, cfg.text_config, stop - start, cfg.downsample_ratio)
    else:
        vision = vision_flops(cfg.vision_config, case.grid_thw(), stop - start)
    return llm_prefill_flops(runner.method, plan, cfg.text_config) + vision


def _is_internvl(adapter) -> bool:
    return getattr(adapter.config, "model_type", "") == "internvl"


def _make_inputs(case, adapter, device):
    """The synthetic request of `case` in the adapter's family."""
    if _is_internvl(adapter):
        from spava.models.internvl.bench import make_inputs as make_internvl_inputs

        return make_internvl_inputs(case, adapter, device=device)
    return make_inputs(case, adapter.token_ids(), device=device)


def _hf_first(adapter, inputs, case) -> None:
    if _is_internvl(adapter):
        from spava.models.internvl.bench import hf_first_token

        hf_first_token(adapter, inputs)
    else:
        _hf_first_token(adapter, inputs, case)


def _record(handle, entry: dict) -> None:
    handle.write(json.dumps(entry) + "\n")
    handle.flush()


def _run_single(spec, name, adapter, inputs, case, device, timer, rate, group):
    """full / hf on rank 0 alone (`group` holds rank 0 only)."""
    runner = _runner(adapter, spec, "full", SPComm.single())
    if name == "hf":
        if inputs.num_tokens > spec.hf_max_tokens:
            return {"skipped": f"over --hf-max-tokens={spec.hf_max_tokens}"}
        result = measure(lambda: _hf_first(adapter, inputs, case), spec, device, group, timer)
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


def _case_entries(spec, adapter, case, device, timer, rate, groups, rank):
    """Every method of one case on the ranks it needs; yields result entries (rank 0 records them)."""
    inputs = _make_inputs(case, adapter, device)
    base = {"case": case.label, "resolution": case.resolution, "frames": case.num_frames,
            "num_tokens": inputs.num_tokens, "size": spec.size}
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
    from spava.comm.collectives import new_group

    groups = {size: new_group(list(range(size))) for size in sorted({1, *spec.world_sizes})}
    adapter = _build_adapter(spec, device)
    timer = TimedEncoder(adapter.encode, device)
    adapter.encode = timer
    rate = matmul_tflops(device)
    handle = open(out_path, "a") if rank == 0 else None
    if handle:
        _record(handle, {"matmul_tflops": rate, "device": torch.cuda.get_device_name() if spec.device == "cuda"
                         else "cpu", "torch": torch.__version__, "spec": {k: str(v) for k, v in vars(spec).items()}})
    for case in spec.cases:
        for entry in _case_entries(spec, adapter, case, device, timer, rate, groups, rank):
            if handle:
                _record(handle, entry)
    if handle:
        handle.close()
    end_spawned_rank()
