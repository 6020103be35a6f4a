"""`spava serve`: its arguments. Light on purpose (imported by `spava.cli`): FastAPI, uvicorn and
httpx are imported only when the command runs, and a missing one is reported with the extra to
install.

    spava serve --config X.yaml [key=value ...] [--host 127.0.0.1] [--port 8000] [--api-key KEY]
    spava serve --connect tcp://10.0.0.1:29600 --config X.yaml        (a pipeline of `spava launch`)
"""

from __future__ import annotations

import sys

from spava.server.options import DEFAULT_MAX_MEDIA_BYTES, DEFAULT_MEDIA_FETCH_TIMEOUT_S
from spava.server.run import serve

SERVE_MODULES = ("fastapi", "uvicorn", "httpx", "prometheus_client")


def add_serve_parser(commands) -> None:
    parser = commands.add_parser("serve", help="OpenAI-compatible HTTP server in front of a pipeline "
                                               "(no --config: the CPU demo)")
    parser.add_argument("--config", help="pipeline YAML (default: the built-in CPU demo); with --connect it "
                                         "describes the remote pipeline (model id, method, system prompt)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (default: $SPAVA_API_KEY)")
    parser.add_argument("--connect", metavar="ADDR", help="serve a pipeline already started by `spava launch` "
                                                          "at this control address instead of starting one")
    parser.add_argument("--served-model-name", help="the model id clients use (default: model.path's folder name, "
                                                    "else <family>-<size>)")
    parser.add_argument("--allowed-local-media-path", metavar="DIR",
                        help="let file:// media URLs read files under DIR (default: file:// refused)")
    parser.add_argument("--allowed-media-domains", metavar="HOST[,HOST...]", default="",
                        help="only fetch http(s) media from these hosts, comma-separated (default: any host)")
    parser.add_argument("--max-media-bytes", type=int, default=DEFAULT_MAX_MEDIA_BYTES,
                        help=f"largest data: or http(s) media item in bytes (default {DEFAULT_MAX_MEDIA_BYTES})")
    parser.add_argument("--media-fetch-timeout", type=float, default=DEFAULT_MEDIA_FETCH_TIMEOUT_S,
                        help=f"seconds to download one http(s) media item (default {DEFAULT_MEDIA_FETCH_TIMEOUT_S:g})")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default info)")
    parser.add_argument("--access-log", action="store_true", help="log every HTTP request")
    parser.set_defaults(handler=run_serve)


def missing_serve_modules() -> list[str]:
    import importlib

    missing = []
    for name in SERVE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def run_serve(args) -> int:
    missing = missing_serve_modules()
    if missing:
        print(f"spava serve needs {', '.join(missing)}: pip install \"spava[serve]\"", file=sys.stderr)
        return 2

    try:
        return serve(args)
    except ValueError as error:
        print(f"spava serve: {error}", file=sys.stderr)
        return 2
