"""`spava eval`: accuracy of a pipeline on VNBench / LongVideoBench annotation files.

    spava eval --config configs/qwen2_5_vl_7b_4gpu.yaml --benchmark vnbench \
        --annotations VNBench-main-4try.json --video-dir videos/ model.path=/models/Qwen2.5-VL-7B-Instruct

Every item is asked through `Pipeline.run` with the paper's sampling (64 frames, uniformly), the
option letter is parsed from the answer, and accuracy per subtask / duration group and overall is
printed and written as JSON. A request that fails (for example an unreadable video) counts as wrong
and its error is kept in the results.
"""

from __future__ import annotations

import sys

from spava.eval.videobench import run_benchmark, write_results


def run_eval(args) -> int:
    from spava.runtime.pipeline import Pipeline, RequestError

    errors: dict[str, str] = {}
    overrides = list(args.overrides) + ([] if args.verbose else ["runtime.log_level=WARNING"])
    with Pipeline.from_yaml(args.config, overrides, is_quiet=True) as pipeline:
        def answer(video_path: str, prompt: str) -> str:
            try:
                result = pipeline.run(video_path, prompt, max_new_tokens=args.max_new_tokens,
                                      video_options={"fps": None, "num_frames": args.num_frames})
            except RequestError as error:
                errors[video_path] = str(error)
                return ""
            return result.text

        results = run_benchmark(args.benchmark, args.annotations, args.video_dir, answer, limit=args.limit)
    results["errors"] = errors

    write_results(results, args.out)
    print(f"{args.benchmark}: {results['accuracy']:.2f}% over {results['num_items']} items "
          f"({results['num_unparsed']} unparsed, {len(errors)} failed requests) -> {args.out}")
    for group, value in results["per_group"].items():
        print(f"  {group:<24} {value['accuracy']:6.2f}%  ({value['correct']}/{value['total']})")
    if "accuracy_4try" in results:
        print(f"  VNBench 4-try accuracy: {results['accuracy_4try']:.2f}%")
    return 0


def add_eval_parser(commands) -> None:
    parser = commands.add_parser("eval", help="VNBench / LongVideoBench accuracy of a pipeline")
    parser.add_argument("--config", help="pipeline YAML (default: the built-in CPU demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--benchmark", required=True, choices=["vnbench", "longvideobench"])
    parser.add_argument("--annotations", required=True, help="annotation JSON (or JSONL) file")
    parser.add_argument("--video-dir", help="directory the annotation's video paths are relative to")
    parser.add_argument("--num-frames", type=int, default=64, help="frames sampled uniformly (paper: 64)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
    parser.add_argument("--out", default="eval_results.json")
    parser.add_argument("--verbose", action="store_true")
    parser.set_defaults(handler=lambda args: _guarded(run_eval, args))


def _guarded(fn, args) -> int:
    try:
        return fn(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"spava eval: {error}", file=sys.stderr)
        return 2
