"""Micro-benchmark of the spava_kernels Triton kernels against the torch code spava runs today.

Shapes default to Qwen2.5-VL-7B on 4 GPUs: a chunk of S = 18,560 rows per rank, Hq = 28, Hkv = 4,
D = 128, an 11-token query, spava's default pool window and passing budget (AttentionConfig) for a
context of 4 chunks. CUDA events around each call, warm-up excluded, median of repeats; L2 is
flushed before every timed call (the inputs of a real layer are not all L2-resident).

    PYTHONPATH=$PWD:$PWD/kernels python examples/bench_kernels.py
    PYTHONPATH=$PWD:$PWD/kernels python examples/bench_kernels.py --dtype fp16 --json kernels.json

Cases (torch side = spava's current code path):
  merge        start_accumulator + merge_partials_ + cast into a bf16 row view  vs  merge_two(out=view)
  merge_into   merge_partials_ into a float32 accumulator (ring)               vs  merge_into_
  score_pool   pool_scores(query_aware_scores(q, k), window)                   vs  score_and_pool
  pack         two torch.gather into the send buffer                           vs  pack_selected
  select_into  topk + two gathers (spava select_into)                          vs  topk + pack_selected
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from spava.attention import scoring
from spava.attention.config import AttentionConfig, num_selected, resolve_passing_len
from spava.attention.merge import merge_partials_torch_ as merge_partials_, start_accumulator
from spava.attention.registry import get_method
from spava_kernels import dispatch, reference

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TRITON = "triton"  # never fall back to torch silently


def parse_args(argv=None) -> argparse.Namespace:
    config = get_method(AttentionConfig()).config  # spava's defaults
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("--rows", 18560), ("--heads", 28), ("--kv-heads", 4), ("--dim", 128), ("--query", 11),
                          ("--world-size", 4), ("--window", config.pool_window), ("--repeats", 50), ("--warmup", 5)):
        parser.add_argument(name, type=int, default=default)
    parser.add_argument("--num-select", type=int, default=None, help="default: spava's budget for world-size chunks")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--no-flush", action="store_true", help="do not flush L2 between timed calls")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.num_select is None:
        budget = resolve_passing_len(config, args.rows * args.world_size)
        args.num_select = num_selected(budget, args.rows, config.round_to)
    return args


def time_ms(fn, repeats: int, warmup: int, flush: torch.Tensor | None) -> float:
    """Median milliseconds of `fn()` between CUDA events (the L2 flush before it is not timed)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if flush is not None:
            flush.zero_()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def merge_cases(args, dtype):
    """(name, torch fn, triton fn, bytes the kernel must move, check fn) for the two merges."""
    shape = (args.rows, args.heads, args.dim)
    out_a, out_b = (torch.randn(shape, device="cuda").to(dtype) for _ in range(2))
    lse_a, lse_b = (torch.randn(shape[:2], device="cuda") * 4 for _ in range(2))
    layer_out = torch.empty((args.rows + 64, *shape[1:]), device="cuda", dtype=dtype)
    dest = layer_out[32:32 + args.rows]  # a row slice of the layer output, as the methods write it

    def torch_merge():
        acc, acc_lse = start_accumulator(out_a, lse_a)
        merge_partials_(acc, acc_lse, out_b, lse_b)
        dest.copy_(acc)

    def triton_merge():
        dispatch.merge_two(out_a, lse_a, out_b, lse_b, out=dest, impl=TRITON)

    acc, acc_lse = start_accumulator(out_a, lse_a)
    element = out_a.element_size()
    merge_bytes = 3 * out_a.numel() * element + 3 * lse_a.numel() * 4
    into_bytes = out_a.numel() * (8 + element) + 3 * lse_a.numel() * 4
    return [
        ("merge", torch_merge, triton_merge, merge_bytes),
        ("merge_into", lambda: merge_partials_(acc, acc_lse, out_b, lse_b),
         lambda: dispatch.merge_into_(acc, acc_lse, out_b, lse_b, impl=TRITON), into_bytes),
    ]


def selection_cases(args, dtype):
    q = torch.randn((args.query, args.heads, args.dim), device="cuda").to(dtype)
    k, v = (torch.randn((args.rows, args.kv_heads, args.dim), device="cuda").to(dtype) for _ in range(2))
    window, n = args.window, args.num_select
    pooled = dispatch.score_and_pool(q, k, window, impl=TRITON)
    index = dispatch.select_topk(pooled, n)
    send = [torch.zeros((n, args.kv_heads, args.dim), device="cuda", dtype=dtype) for _ in range(2)]
    row_bytes = n * args.kv_heads * args.dim * k.element_size()
    return [
        ("score_pool", lambda: scoring.pool_scores(scoring.query_aware_scores(q, k), window),
         lambda: dispatch.score_and_pool(q, k, window, impl=TRITON), k.numel() * k.element_size() + pooled.numel() * 4),
        ("pack", lambda: reference.pack_selected(k, v, index, *send),
         lambda: dispatch.pack_selected(k, v, index, *send, impl=TRITON), 4 * row_bytes + index.numel() * 8),
        ("select_into", lambda: scoring.select_into(pooled, n, k, v, *send),
         lambda: dispatch.select_into(pooled, n, k, v, *send, impl=TRITON), 4 * row_bytes + pooled.numel() * 4),
    ]


def check_agreement(args, dtype) -> dict:
    """Max |triton - torch| of each kernel at the benchmark shapes (a sanity check, not the test)."""
    q = torch.randn((args.query, args.heads, args.dim), device="cuda").to(dtype)
    k = torch.randn((args.rows, args.kv_heads, args.dim), device="cuda").to(dtype)
    pooled = dispatch.score_and_pool(q, k, args.window, impl=TRITON)
    score_diff = (pooled - reference.score_and_pool(q, k, args.window)).abs()
    shape = (args.rows, args.heads, args.dim)
    pieces = [torch.randn(shape, device="cuda").to(dtype), torch.randn(shape[:2], device="cuda"),
              torch.randn(shape, device="cuda").to(dtype), torch.randn(shape[:2], device="cuda")]
    got, got_lse = dispatch.merge_two(*pieces, impl=TRITON)
    want, want_lse = reference.merge_two(*pieces)
    return {"score_pool": float(score_diff.max()), "merge_out": float((got.float() - want.float()).abs().max()),
            "merge_lse": float((got_lse - want_lse).abs().max())}


def main(argv=None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available() or not dispatch.has_triton():
        raise SystemExit("needs a CUDA device and Triton")
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    flush = None if args.no_flush else torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    print(f"{torch.cuda.get_device_name()}  S={args.rows} Hq={args.heads} Hkv={args.kv_heads} D={args.dim} "
          f"Lq={args.query} window={args.window} num_select={args.num_select} {args.dtype}")
    print(f"agreement with torch: {check_agreement(args, dtype)}")
    rows = []
    print(f"{'kernel':<12} {'torch ms':>9} {'triton ms':>10} {'speed-up':>9} {'triton GB/s':>12}")
    for name, torch_fn, triton_fn, nbytes in merge_cases(args, dtype) + selection_cases(args, dtype):
        torch_ms = time_ms(torch_fn, args.repeats, args.warmup, flush)
        triton_ms = time_ms(triton_fn, args.repeats, args.warmup, flush)
        rows.append({"kernel": name, "torch_ms": torch_ms, "triton_ms": triton_ms,
                     "speedup": torch_ms / triton_ms, "triton_gbps": nbytes / triton_ms / 1e6})
        speedup, gbps = torch_ms / triton_ms, rows[-1]["triton_gbps"]
        print(f"{name:<12} {torch_ms:9.4f} {triton_ms:10.4f} {speedup:8.2f}x {gbps:12.0f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "device": torch.cuda.get_device_name(), "results": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
