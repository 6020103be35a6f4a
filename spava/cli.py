"""The `spava` command line: run, launch, serve, bench, bench-stream, eval, check-attention."""

from __future__ import annotations

import argparse
import sys

from spava.bench.e2e import main as e2e_main
from spava.bench.stream import main as stream_main
from spava.eval.cli import add_eval_parser
from spava.run_command import DEMO_PROMPT, run
from spava.server.cli import add_serve_parser
from spava.server.options import DEFAULT_MAX_MEDIA_BYTES, DEFAULT_MEDIA_FETCH_TIMEOUT_S


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="pipeline YAML (default: the built-in CPU demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. decode.max_new_tokens=32")


def _run(args: argparse.Namespace) -> int:
    return run(args)


def _launch(args: argparse.Namespace) -> int:
    from spava.runtime.serve import serve

    try:
        return serve(args)
    except ValueError as error:
        print(f"spava launch: {error}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as error:
        print(f"spava launch: {error}", file=sys.stderr)
        return 1


def _check_attention(args: argparse.Namespace) -> int:
    from spava.tools.check_attention import CheckSpec, format_table, run_check

    spec = CheckSpec(num_tokens=args.num_tokens, num_query_tokens=args.num_query_tokens, world_size=args.world_size)
    print(format_table(spec, run_check(spec)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spava", description="Fast long-video understanding on several GPUs.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="answer one question about a video (no --config: the CPU demo)",
        epilog="exit codes: 0 answered, 1 the request or the pipeline failed, 2 bad input / options / config, "
               "130 interrupted, 143 terminated")
    _add_config_args(run)
    run.add_argument("--video", help="video file or http(s) URL (downloaded first); with a random-weight config "
                                     "and no --video / --document: a generated synthetic video")
    run.add_argument("--document", help="a text file to ask about instead of a video")
    run.add_argument("--prompt", help=f"the question (default: {DEMO_PROMPT!r})")
    run.add_argument("--max-new-tokens", type=_positive_int, help="override decode.max_new_tokens (>= 1)")
    run.add_argument("--stream", action="store_true", help="print the answer as it is generated; with --json: "
                                                          "JSON lines, {\"delta\": ...} per piece then the result")
    run.add_argument("--json", action="store_true", help="machine-readable output (an {\"error\": ...} object on "
                                                        "failure), no progress bars")
    run.add_argument("--max-media-bytes", type=_positive_int, default=DEFAULT_MAX_MEDIA_BYTES,
                     help=f"largest http(s) video to download (default {DEFAULT_MAX_MEDIA_BYTES})")
    run.add_argument("--media-fetch-timeout", type=float, default=DEFAULT_MEDIA_FETCH_TIMEOUT_S,
                     help=f"seconds to download an http(s) video (default {DEFAULT_MEDIA_FETCH_TIMEOUT_S:g})")
    run.add_argument("--verbose", action="store_true", help="show worker logs")
    run.add_argument("--connect", help="send the request to a pipeline served by `spava launch` at this address")
    run.set_defaults(handler=_run)

    launch = commands.add_parser(
        "launch", help="start a pipeline (one node, or several through torchrun) and serve requests",
        epilog="with --nnodes, runs `python -m torch.distributed.run ... -m spava.runtime.node` on this node; "
               "the process of global rank 0 runs the scheduler and prints the address clients connect to")
    _add_config_args(launch)
    launch.add_argument("--nnodes", type=_positive_int, help="number of machines: torchrun starts the model ranks")
    launch.add_argument("--nproc-per-node", type=_positive_int,
                        help="model ranks per machine (default: the YAML's ranks divided evenly)")
    launch.add_argument("--rdzv-endpoint", help="HOST:PORT of torchrun's c10d rendezvous (the same on every node)")
    launch.add_argument("--rdzv-conf", help="torchrun's c10d options, e.g. is_host=1 on the rendezvous host when "
                                            "it is not known by the endpoint's name")
    launch.add_argument("--node-rank", type=int, help="static rendezvous: this machine's rank (0 = the head)")
    launch.add_argument("--master-addr", help="static rendezvous: the head machine's address")
    launch.add_argument("--master-port", type=int, default=29500, help="static rendezvous: its port (default 29500)")
    launch.add_argument("--local-addr", help="this machine's address for torchrun (c10d ranks nodes by it)")
    launch.add_argument("--host", help="the head's address for clients and the other nodes (default: MASTER_ADDR)")
    launch.add_argument("--port", type=int, default=29600,
                        help="the head's control port (default 29600); on several nodes its data server uses +1")
    launch.set_defaults(handler=_launch)

    add_serve_parser(commands)

    commands.add_parser("bench", help="side-by-side time-to-first-token benchmark (see `spava bench --help`)")
    commands.add_parser("bench-stream", help="requests/s and TTFT of a request stream per GPU layout "
                                             "(see `spava bench-stream --help`)")
    commands.add_parser("bench-e2e", help="from a video file to the last token, per stage, against HF transformers "
                                          "(see `spava bench-e2e --help`)")

    commands.add_parser("bench-decode", help="time per output token at a given KV length, per decode variant "
                                             "(see `spava bench-decode --help`)")

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
        return stream_main(argv[1:])
    if argv[:1] == ["bench-e2e"]:  # and `spava bench-e2e`
        return e2e_main(argv[1:])
    if argv[:1] == ["bench-decode"]:  # and `spava bench-decode`
        from spava.bench.decode import main as decode_main

        return decode_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:  # each command closed what it started on the way out
        print(f"spava {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
