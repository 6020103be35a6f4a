"""The `spava` command line: run, launch, serve, bench, bench-stream, eval, check-attention."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

DEMO_PROMPT = "What is happening in this video?"


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="pipeline YAML (default: the built-in CPU demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. decode.max_new_tokens=32")


def _timing_table(timings: dict) -> str:
    rows = [(key.removesuffix("_s"), value) for key, value in timings.items() if key.endswith("_s")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value * 1000:10.1f} ms" for name, value in rows)


def _demo_video(directory: str) -> str:
    from spava.media.synthetic import write_synthetic_video

    return str(write_synthetic_video(Path(directory) / "demo.mp4", num_frames=32, height=120, width=160, fps=8.0))


def _print_result(result, is_demo: bool) -> None:
    print(result.text)
    print(f"\n[{result.finish_reason}] {len(result.token_ids)} tokens | {result.num_prompt_tokens} prompt tokens "
          f"({result.num_visual_tokens} visual, {result.num_frames} frames) | attention {result.method} on "
          f"{result.world_size} ranks | config {result.config_hash}")
    print("timings:\n" + _timing_table(result.timings))
    if is_demo:
        print("\nnote: the built-in demo runs a tiny Qwen2.5-VL with RANDOM weights, so the answer is noise; "
              "it shows every stage working. Pass --config with model.path=<local checkpoint> for real answers.")


def _run(args: argparse.Namespace) -> int:
    from spava.runtime.pipeline import Pipeline, RequestError

    overrides = list(args.overrides)
    if not args.verbose:
        overrides.append("runtime.log_level=WARNING")
    is_demo = args.config is None
    with tempfile.TemporaryDirectory(prefix="spava-run-") as tmp:
        video = args.video or (None if args.document or not is_demo else _demo_video(tmp))
        prompt = args.prompt or DEMO_PROMPT
        document = Path(args.document).read_text() if args.document else None
        sampling = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
        try:
            pipeline = (Pipeline.connect(args.connect) if args.connect
                        else Pipeline.from_yaml(args.config, overrides, is_quiet=args.json))
            with pipeline:
                if args.stream and not args.json:
                    for text in pipeline.stream(video, prompt, document=document, **sampling):
                        print(text, end="", flush=True)
                    print()
                    return 0
                result = pipeline.run(video, prompt, document=document, **sampling)
        except (RequestError, ValueError) as error:
            print(f"spava run: {error}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps({**result.__dict__, "is_random_weights": is_demo}, indent=2))
    else:
        _print_result(result, is_demo)
    return 0


def _launch(args: argparse.Namespace) -> int:
    from spava.runtime.serve import serve

    try:
        return serve(args)
    except ValueError as error:
        print(f"spava launch: {error}", file=sys.stderr)
        return 2


def _check_attention(args: argparse.Namespace) -> int:
    from spava.tools.check_attention import CheckSpec, format_table, run_check

    spec = CheckSpec(num_tokens=args.num_tokens, num_query_tokens=args.num_query_tokens, world_size=args.world_size)
    print(format_table(spec, run_check(spec)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spava", description="Fast long-video understanding on several GPUs.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="answer one question about a video (no --config: the CPU demo)")
    _add_config_args(run)
    run.add_argument("--video", help="video file (default in the demo: a generated synthetic video)")
    run.add_argument("--document", help="a text file to ask about instead of a video")
    run.add_argument("--prompt", help=f"the question (default: {DEMO_PROMPT!r})")
    run.add_argument("--max-new-tokens", type=int, help="override decode.max_new_tokens")
    run.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    run.add_argument("--json", action="store_true", help="machine-readable output, no progress bars")
    run.add_argument("--verbose", action="store_true", help="show worker logs")
    run.add_argument("--connect", help="send the request to a pipeline served by `spava launch` at this address")
    run.set_defaults(handler=_run)

    launch = commands.add_parser("launch", help="start a pipeline (one node or several) and serve requests")
    _add_config_args(launch)
    launch.add_argument("--hostfile", help="deepspeed-style hostfile: 'host slots=N' per line, head first")
    launch.add_argument("--nnodes", type=int, help="number of nodes (torchrun style)")
    launch.add_argument("--node-rank", type=int, help="this node's rank (0 = head)")
    launch.add_argument("--master-addr", help="the head node's address (its interface to bind)")
    launch.add_argument("--master-port", type=int, default=29600, help="control port; model ranks meet at +1")
    launch.add_argument("--nproc-per-node", type=int, help="model ranks per node (default: split evenly)")
    launch.set_defaults(handler=_launch)

    from spava.server.cli import add_serve_parser  # light: FastAPI is imported only when `serve` runs

    add_serve_parser(commands)

    commands.add_parser("bench", help="side-by-side time-to-first-token benchmark (see `spava bench --help`)")
    commands.add_parser("bench-stream", help="requests/s and TTFT of a request stream per GPU layout "
                                             "(see `spava bench-stream --help`)")
    commands.add_parser("bench-e2e", help="from a video file to the last token, per stage, against HF transformers "
                                          "(see `spava bench-e2e --help`)")

    from spava.eval.cli import add_eval_parser

    add_eval_parser(commands)

    check = commands.add_parser(
        "check-attention", help="run every sequence-parallel attention method on CPU ranks and compare with full"
    )
    check.add_argument("--world-size", type=int, default=2, help="number of local CPU ranks (default 2)")
    check.add_argument("--num-tokens", type=int, default=4096, help="prompt length (default 4096)")
    check.add_argument("--num-query-tokens", type=int, default=16, help="query block length (default 16)")
    check.set_defaults(handler=_check_attention)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # `spava bench` owns its own arguments
        from spava.bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["bench-stream"]:  # so does `spava bench-stream`
        from spava.bench.stream import main as stream_main

        return stream_main(argv[1:])
    if argv[:1] == ["bench-e2e"]:  # and `spava bench-e2e`
        from spava.bench.e2e import main as e2e_main

        return e2e_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
