"""Run the server: start (or connect to) the pipeline, build the app, serve it with uvicorn until
Ctrl-C / SIGTERM, then close the pipeline. Prints the address once the socket listens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading

from spava.config import load_config
from spava.server.options import ServerOptions


def options_from_args(args) -> ServerOptions:
    return ServerOptions(
        api_key=args.api_key or os.environ.get("SPAVA_API_KEY") or None,
        allowed_local_media_path=args.allowed_local_media_path,
        allowed_media_domains=tuple(args.allowed_media_domains.split(",")),
        max_media_bytes=args.max_media_bytes,
        media_fetch_timeout_s=args.media_fetch_timeout,
        served_model_name=args.served_model_name,
    )


def _pipeline_from_args(args):
    from spava.runtime.pipeline import Pipeline

    config = load_config(args.config, list(args.overrides))
    if args.connect:
        return Pipeline.connect(args.connect, config)
    return Pipeline.from_config(config)


def serve_app(app, host: str, port: int, *, log_level: str = "info", access_log: bool = False, on_ready=None) -> None:
    """Serve `app` with uvicorn (one process, one event loop) until stopped by a signal.

    `on_ready(host, port)` is called once the socket listens (with the real port when `port` is 0).
    """
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started and on_ready is not None:
            bound_host, bound_port = server.servers[0].sockets[0].getsockname()[:2]
            on_ready(bound_host, bound_port)
        await task

    # uvicorn shuts down on SIGINT / SIGTERM, then raises the signal again for the previous handler:
    # make both end this function normally, so that the caller closes the pipeline
    previous = signal.signal(signal.SIGTERM, _stop_serving) if _is_main_thread() else None
    try:
        asyncio.run(main())
    except (KeyboardInterrupt, _StopServing):
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _StopServing(Exception):
    """SIGTERM arrived: leave the server loop like Ctrl-C does."""


def _stop_serving(signum, frame) -> None:
    raise _StopServing


def _is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def serve(args) -> int:
    from spava.server.app import create_app

    options = options_from_args(args)
    pipeline = _pipeline_from_args(args)
    try:
        pipeline.start()  # connecting checks that a pipeline answers there (runtime.connect_timeout_s)
    except ConnectionError as error:
        raise ValueError(str(error)) from None
    with pipeline:
        app = create_app(pipeline, options)
        served = app.state.spava.served

        def ready(host: str, port: int) -> None:
            auth = "API key required" if options.api_key else "no API key"
            print(f"spava serve: ready at http://{host}:{port}/v1 (model {served.model_id!r}, attention "
                  f"{served.method}, {auth}; Ctrl-C to stop)", flush=True)

        serve_app(app, args.host, args.port, log_level=args.log_level, access_log=args.access_log, on_ready=ready)
    return 0
