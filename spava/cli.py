"""The `spava` command line."""

from __future__ import annotations

import argparse
import sys


def _check_attention(args: argparse.Namespace) -> int:
    from spava.tools.check_attention import CheckSpec, format_table, run_check

    spec = CheckSpec(num_tokens=args.num_tokens, num_query_tokens=args.num_query_tokens, world_size=args.world_size)
    print(format_table(spec, run_check(spec)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spava", description="Fast long-video understanding on several GPUs.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check-attention", help="run every sequence-parallel attention method on CPU ranks and compare with full"
    )
    check.add_argument("--world-size", type=int, default=2, help="number of local CPU ranks (default 2)")
    check.add_argument("--num-tokens", type=int, default=4096, help="prompt length (default 4096)")
    check.add_argument("--num-query-tokens", type=int, default=16, help="query block length (default 16)")
    check.set_defaults(handler=_check_attention)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
