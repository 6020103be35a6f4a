"""`spava bench-decode`: time per output token of the decode engine at a given KV length, one device.

    spava bench-decode --size 7b --kv-tokens 148539 --new-tokens 64 --repeats 3

Builds the family's language model with random weights (speed does not depend on their values),
fills a KV cache of `--kv-tokens` random rows per layer (no prefill: a decode step reads the cache
the same way whatever it holds) and serves `--repeats` requests of `--new-tokens` greedy tokens
through `DecodeEngine`, the path every request takes, after `--warmup` requests. Each variant runs on
the same model and cache, one after the other:

* `default`: fused Q/K/V and gate/up weights, compiled elementwise ops, CUDA graph (one rank) or
  the MLP and LM head split over the ranks (several);
* `unfused`: the modules' own projections (three Q/K/V GEMVs, two for gate/up);
* `eager`: no CUDA graph (one rank);
* `warm-step`: as `default`, but every request runs one eager step before capturing (one rank);
* `no-tp`: every rank runs the whole MLP and LM head (several ranks).

With `--world-size W` it spawns W ranks (NCCL on CUDA, one GPU each; gloo on the CPU) that hold the
KV cache as a W-rank prefill leaves it (zigzag chunks; the last rank stores new tokens) and decode
as a pipeline request does: attention over each rank's shard, LSE-merged, and (by default) the MLP
and LM head split over the ranks.

Per variant (median over requests): `tpot_s` (mean time per token after the first, what
`spava bench-e2e` reports), the first three step times, the steady step time (median from step 4
on), and on CUDA the GPU time of one replayed step (CUDA events) with the bytes it must read
(weights + KV) as an effective bandwidth next to a device copy's. `--profile DIR` writes a kernel
table of replayed steps per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

VARIANTS = ("default", "unfused", "eager", "warm-step", "no-tp")
ONE_RANK_VARIANTS = ("default", "unfused", "eager", "warm-step")
MULTI_RANK_VARIANTS = ("default", "unfused", "no-tp")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="spava bench-decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2_5_vl", help="model family (spava.models.family.FAMILIES)")
    parser.add_argument("--size", default="7b", help="size preset of the family (random weights)")
    parser.add_argument("--kv-tokens", type=int, nargs="+", default=[148539], help="KV cache rows (prompt tokens)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="measured requests per variant")
    parser.add_argument("--warmup", type=int, default=1, help="requests per variant before measuring")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS,
                        help=f"default: {' '.join(ONE_RANK_VARIANTS)} on one rank, {' '.join(MULTI_RANK_VARIANTS)} on several")
    parser.add_argument("--world-size", type=int, default=1, help="decode ranks (one GPU each on CUDA)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--profile", default="", help="directory for a kernel table per variant (CUDA)")
    parser.add_argument("--json", default="", help="write the results to this file")
    args = parser.parse_args(argv)
    allowed = ONE_RANK_VARIANTS if args.world_size == 1 else MULTI_RANK_VARIANTS
    if args.variants is None:
        args.variants = list(allowed)
    wrong = [v for v in args.variants if v not in allowed]
    if args.world_size < 1:
        parser.error("--world-size must be at least 1")
    if wrong:
        parser.error(f"--variants {' '.join(wrong)}: not measured with --world-size {args.world_size} (the CUDA graph "
                     f"is one rank's, the tensor-parallel split several ranks'); choose from {' '.join(allowed)}")
    return args


def _build(args, device: str):
    """(runner, modules) of the family's language model with random weights on `device`: `full` on one
    rank, or this rank of a `zigzag_ring` world (whose plan places the KV cache as a prefill would)."""
    from spava.attention.config import AttentionConfig
    from spava.attention.registry import get_method
    from spava.comm.collectives import SPComm
    from spava.config import ModelConfig
    from spava.models.family import get_family
    from spava.models.runner import ModelRunner

    family = get_family(ModelConfig(family=args.model, size=args.size, dtype=args.dtype))
    adapter = family.build(("text",), device)
    method, comm = ("full", SPComm.single()) if args.world_size == 1 else ("zigzag_ring", SPComm())
    runner = ModelRunner(adapter, get_method(AttentionConfig(method=method)), comm)
    return runner, runner.decoder.m


def _state(runner, modules, num_tokens: int, extra: int):
    """This rank's PrefillState of a `num_tokens` prompt: random K/V for the rows its plan owns in
    every layer, random last-token logits."""
    from spava.models.kv_cache import DistributedKVCache
    from spava.models.runner import PrefillState

    device, dtype = runner.device, modules.embed_tokens.weight.dtype
    comm = runner.comm
    plan = runner.method.plan(num_tokens, 1, comm.world_size, comm.rank)
    ctx = runner.method.context(plan, comm, device)
    cache = DistributedKVCache(is_owner=plan.rank == plan.decode_rank, extra_capacity=extra)
    generator = torch.Generator(device=device).manual_seed(comm.rank)
    num_owned = sum(stop - start for start, stop in plan.owned_local_ranges())
    shape = (num_owned, modules.num_kv_heads, modules.head_dim)
    for _ in modules.layers:
        cache.add_layer(torch.randn(shape, device=device, dtype=dtype, generator=generator),
                        torch.randn(shape, device=device, dtype=dtype, generator=generator))
    logits = torch.randn(modules.lm_head.weight.shape[0], device=device, generator=generator)
    return PrefillState(plan, ctx, cache, logits)


def _request(runner, state, num_tokens: int, new_tokens: int, variant: str):
    """One request of `new_tokens` greedy tokens; (seconds from start to each token, engine)."""
    from spava.models.decode_step import DecodeEngine
    from spava.models.generation import SamplingParams

    if variant == "warm-step":
        runner.decoder.has_captured_decode = False
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    engine = DecodeEngine(runner.decoder, state, runner.comm, params, num_tokens,
                          use_graph=runner.comm.world_size == 1 and variant != "eager",
                          use_tensor_parallel=variant != "no-tp")
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    start = time.perf_counter()
    stamps = []
    engine.launch_first()
    for step in range(1, new_tokens + 1):
        if step < new_tokens:
            engine.launch_step()
        engine.read(step - 1)
        stamps.append(time.perf_counter() - start)
    return stamps, engine


def _event_median_ms(fn, repeats: int) -> float:
    """Median GPU milliseconds of `fn()` between CUDA events."""
    times = []
    for _ in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    return statistics.median(times)


def _replay_ms(engine, repeats: int = 20) -> float | None:
    """GPU milliseconds of one replayed step (median), or None without a graph."""
    return None if engine.graph is None else _event_median_ms(engine.graph.replay, repeats)


def _copy_gbps(device, num_bytes: int = 2 << 30) -> float:
    """Device memory bandwidth of a plain copy (read + write bytes per second), GB/s."""
    source = torch.empty(num_bytes // 2, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    return num_bytes / _event_median_ms(lambda: target.copy_(source), 10) / 1e6


def bytes_per_step(modules, num_tokens: int) -> int:
    """Bytes a decode step must read: every weight except the embedding table (one row of it), and
    the K and V of `num_tokens` rows in every layer."""
    weights = sum(p.numel() * p.element_size() for p in modules.layers.parameters())
    weights += sum(p.numel() * p.element_size() for p in modules.norm.parameters())
    weights += modules.lm_head.weight.numel() * modules.lm_head.weight.element_size()
    kv_row = 2 * modules.num_kv_heads * modules.head_dim * modules.embed_tokens.weight.element_size()
    return weights + kv_row * len(modules.layers) * num_tokens


def _profile(engine, path: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            engine.graph.replay() if engine.graph is not None else engine._layers()
        torch.cuda.synchronize()
    with open(path, "w") as handle:
        handle.write("five decode steps\n")
        handle.write(prof.key_averages().table(sort_by="device_time_total", row_limit=40))


def _measure(runner, modules, state, num_tokens: int, args, variant: str) -> dict:
    saved = runner.decoder.fused
    if variant == "unfused":
        runner.decoder.fused = [None] * len(saved)
    try:
        runs = []
        for index in range(args.warmup + args.repeats):
            stamps, engine = _request(runner, state, num_tokens, args.new_tokens, variant)
            if index >= args.warmup:
                runs.append((stamps, _replay_ms(engine) if runner.device.type == "cuda" else None))
        if args.profile and runner.device.type == "cuda" and runner.comm.world_size == 1:
            _profile(engine, f"{args.profile}/decode_{variant}_{num_tokens}.txt")
    finally:
        runner.decoder.fused = saved
    steps = [[b - a for a, b in zip(stamps, stamps[1:])] for stamps, _ in runs]
    result = {
        "variant": variant, "kv_tokens": num_tokens, "new_tokens": args.new_tokens,
        "tpot_s": statistics.median((s[-1] - s[0]) / (len(s) - 1) for s, _ in runs),
        "first_token_s": statistics.median(s[0] for s, _ in runs),
        "first_steps_s": [statistics.median(step[i] for step in steps) for i in range(min(3, len(steps[0])))],
        "steady_step_s": statistics.median(t for step in steps for t in step[3:]),
    }
    replays = [ms for _, ms in runs if ms is not None]
    if replays:
        result["replay_ms"] = statistics.median(replays)
    return result


def format_row(result: dict, num_bytes: int) -> str:
    first = " ".join(f"{t * 1e3:6.1f}" for t in result["first_steps_s"])
    line = (f"{result['variant']:>9} {result['kv_tokens']:>8} | TPOT {result['tpot_s'] * 1e3:6.2f} ms | steady "
            f"{result['steady_step_s'] * 1e3:6.2f} ms | first steps {first} ms")
    if "replay_ms" in result:
        line += f" | replay {result['replay_ms']:6.2f} ms = {num_bytes / result['replay_ms'] / 1e6:5.0f} GB/s"
    return line


def _run(rank: int, args, port: int) -> None:
    """Every variant at every KV length on this rank; rank 0 prints and writes the results."""
    import torch.distributed as dist

    from spava.comm.collectives import end_spawned_rank

    is_cuda = args.device == "cuda"
    device = f"cuda:{rank}" if is_cuda else "cpu"
    if args.world_size > 1:
        if is_cuda:
            torch.cuda.set_device(rank)
        torch.set_num_threads(max(1, min(8, (os.cpu_count() or 1) // args.world_size)))
        dist.init_process_group("nccl" if is_cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=args.world_size)
    runner, modules = _build(args, device)
    is_reporter = rank == 0
    info = {"model": args.model, "size": args.size, "dtype": args.dtype, "device": str(runner.device),
            "world_size": args.world_size, "torch": torch.__version__, "new_tokens": args.new_tokens,
            "repeats": args.repeats, "warmup": args.warmup, "date": time.strftime("%Y-%m-%d")}
    if is_cuda:
        info.update(gpu=torch.cuda.get_device_name(runner.device), copy_gbps=round(_copy_gbps(runner.device)))
    if is_reporter:
        print("spava bench-decode: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    results = []
    for num_tokens in args.kv_tokens:
        num_bytes = bytes_per_step(modules, num_tokens)
        if is_reporter:
            print(f"KV {num_tokens} rows: a step reads {num_bytes / 1e9:.2f} GB"
                  + (f" (in all, over {args.world_size} ranks)" if args.world_size > 1 else ""), flush=True)
        # room for every request's tokens, plus the replays and profiled steps that follow a request
        state = _state(runner, modules, num_tokens, args.new_tokens + 64)
        with torch.inference_mode():
            for variant in args.variants:
                result = _measure(runner, modules, state, num_tokens, args, variant)
                result["bytes_per_step"] = num_bytes
                results.append(result)
                if is_reporter:
                    print(format_row(result, num_bytes), flush=True)
        del state
    if is_reporter and args.json:
        with open(args.json, "w") as handle:
            json.dump({"config": info, "results": results}, handle, indent=1)
    if args.world_size > 1:
        end_spawned_rank()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.world_size == 1:
        _run(0, args, 0)
        return 0
    import torch.multiprocessing as mp

    from spava.runtime.launch import free_port

    if args.device == "cuda" and torch.cuda.device_count() < args.world_size:
        raise SystemExit(f"spava bench-decode: --world-size {args.world_size} needs {args.world_size} GPUs, "
                         f"this machine has {torch.cuda.device_count()}")
    mp.start_processes(_run, args=(args, free_port()), nprocs=args.world_size, start_method="spawn")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
