"""`spava bench`: time to first token of every attention method, side by side, in one run.

    spava bench --size 7b --resolutions 1440 --frames 64 --world-sizes 4 --out bench_out/
    spava bench --model qwen3_vl --size 8b --resolutions 1440 --frames 64 --world-sizes 4

spawns one process per GPU (NCCL; gloo with --device cpu), builds the model with random weights
once per process, and runs `full` (1 GPU), `hf` (HF transformers on 1 GPU) and every
sequence-parallel method on W GPUs on the same synthetic, already decoded video. Prints a table and
writes results.jsonl, results.json and speedup.png under --out.
"""

from __future__ import annotations

import argparse
import json
import os

from spava.bench.harness import BenchSpec, default_methods, method_choices
from spava.bench.inputs import VideoCase
from spava.bench.report import format_table, load_results, write_plot
from spava.bench.worker import bench_rank
from spava.config import ModelConfig
from spava.runtime.launch import free_port


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="spava bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2_5_vl", help="model family with a vision tower: qwen2_5_vl, "
                        "qwen3_vl, internvl (spava.models.family.FAMILIES)")
    parser.add_argument("--size", default="7b", help="size preset of the family (random weights): Qwen2.5-VL tiny, "
                        "3b, 7b, 32b, 72b; Qwen3-VL tiny, 2b, 4b, 8b, 32b; InternVL3 tiny, 1b, 2b, 8b (one 448x448 "
                        "tile per frame, any resolution)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[1440], help="360 720 1080 1440")
    parser.add_argument("--frames", type=int, nargs="+", default=[64])
    parser.add_argument("--methods", nargs="+", default=default_methods(), choices=method_choices())
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--backend", default="auto", help="attention kernel backend")
    parser.add_argument("--encoder", default="fast", choices=["hf", "fast"], help="vision tower implementation")
    parser.add_argument("--hf-max-tokens", type=int, default=10**9, help="skip the HF baseline above this length")
    parser.add_argument("--out", default="bench_out", help="output directory")
    parser.add_argument("--profile", action="store_true", help="also write a torch.profiler table per method")
    return parser.parse_args(argv)


def _spec(args) -> BenchSpec:
    ModelConfig(family=args.model, size=args.size)  # refuses an unknown family or size before spawning
    cases = [VideoCase(r, f) for r in args.resolutions for f in args.frames]
    return BenchSpec(model=args.model, size=args.size, cases=cases, methods=args.methods, world_sizes=args.world_sizes,
                     repeats=args.repeats, warmup=args.warmup, device=args.device, dtype=args.dtype,
                     backend=args.backend, hf_max_tokens=args.hf_max_tokens, encoder=args.encoder,
                     profile_dir=args.out if args.profile else "")


def main(argv=None) -> int:
    import torch.multiprocessing as mp

    args = parse_args(argv)
    spec = _spec(args)
    os.makedirs(args.out, exist_ok=True)
    jsonl = os.path.join(args.out, "results.jsonl")
    open(jsonl, "w").close()
    world_size = max([1, *spec.world_sizes])
    print(f"spava bench: {spec.model} {spec.size}, cases {[c.label for c in spec.cases]}, methods {spec.methods}, "
          f"W {spec.world_sizes}, repeats {spec.repeats} (+{spec.warmup} warm-up), {spec.device}", flush=True)
    init = f"tcp://127.0.0.1:{free_port()}"
    mp.start_processes(bench_rank, args=(world_size, spec, init, jsonl), nprocs=world_size, start_method="spawn")
    header, entries = load_results(jsonl)
    print(format_table(header, entries))
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump({"header": header, "results": entries}, handle, indent=1)
    if write_plot(entries, os.path.join(args.out, "speedup.png")):
        print(f"plot: {os.path.join(args.out, 'speedup.png')}")
    return 0
