"""`spava launch`: start a pipeline on this machine and serve requests until Ctrl-C.

Clients in other processes connect to the printed control address with
`Pipeline.connect(address)` (or `spava run --connect address`).
"""

from __future__ import annotations

import signal
import threading

from spava.config import load_config
from spava.runtime.launch import free_port
from spava.runtime.pipeline import Pipeline


def serve(config_path: str | None, overrides: list[str]) -> int:
    config = load_config(config_path, overrides)
    if config.runtime.control_address == "auto":
        config.runtime.control_address = f"tcp://127.0.0.1:{free_port()}"
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Pipeline.from_config(config):
        print(f"spava: serving on {config.runtime.control_address} (Ctrl-C to stop); connect with "
              f"Pipeline.connect({config.runtime.control_address!r})", flush=True)
        stop.wait()
    return 0
