"""`python -m spava.runtime.node`: one process of a pipeline whose model ranks torchrun or the
deepspeed launcher started, on one machine or several.

    torchrun --nnodes 2 --nproc-per-node K --rdzv-backend c10d --rdzv-endpoint HEAD:29400 \\
        -m spava.runtime.node --config X.yaml [--port 29600] [key=value ...]
    deepspeed --hostfile H --no_local_rank --module spava.runtime.node --config X.yaml [key=value ...]

Each process the launcher starts is one model rank (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT from its environment, `spava.runtime.nodes`); WORLD_SIZE must equal the YAML's number of
model ranks. Global rank 0 is the head: it runs a `Pipeline` (the scheduler, the video and layout
workers, the control socket at tcp://HOST:PORT, HOST = --host or MASTER_ADDR, and on several nodes
the data server at PORT + 1), starts its model rank as a worker that joins the launcher's world, and
prints the address clients connect to (`Pipeline.connect`, `spava run --connect`, `spava serve
--connect`). Every other process runs its model rank itself and connects to the head. With
runtime.secret (or SPAVA_SECRET) every control and data socket is CURVE-encrypted.

Stopping: SIGINT / SIGTERM to the head (what torchrun and deepspeed forward) closes the pipeline in
order; it tells every model rank to exit, so the launcher's other processes end with code 0. Another
process exits at once on SIGINT / SIGTERM, removing its files. Model ranks are never restarted here:
a rank that dies, or a node that stops answering, leaves the pipeline unhealthy (its requests fail,
the status names the lost host) until the job is started again.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import threading

from spava.comm.security import resolve_secret
from spava.comm.shm import (DATA_ADDRESS_ENV, NODE_ENV, OWNER_ENV, new_pipeline_id, owner_tag, sweep_orphans,
                            sweep_owner)
from spava.config import load_config
from spava.runtime.nodes import DEFAULT_CONTROL_PORT, HeadAddresses, HeadNode, LaunchedRank
from spava.runtime.pipeline import Pipeline
from spava.runtime.worker import Worker, configure_logging, die_with_parent
from spava.runtime.worker import parse_args as worker_args

logger = logging.getLogger("spava.node")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m spava.runtime.node",
        description="one model rank of a pipeline started by torchrun or the deepspeed launcher; rank 0 also "
                    "runs the scheduler and serves clients")
    parser.add_argument("--config", help="pipeline YAML (default: the built-in CPU demo)")
    parser.add_argument("--host", help="the head's address as clients and the other nodes reach it "
                                       "(default: MASTER_ADDR, which the launcher sets to rank 0's node)")
    parser.add_argument("--port", type=int, default=DEFAULT_CONTROL_PORT,
                        help=f"control port on the head (default {DEFAULT_CONTROL_PORT}); its data server for "
                             "the other nodes listens at port + 1")
    parser.add_argument("--quiet", action="store_true", help="no progress output from the workers")
    parser.add_argument("--local_rank", "--local-rank", type=int, dest="local_rank",
                        help="what the deepspeed launcher passes without --no_local_rank; must equal LOCAL_RANK")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser.parse_args(argv)


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM; the caller then closes everything it started."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):  # a timed wait, so the signal handler runs promptly
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def resolve(args: argparse.Namespace, environ) -> tuple[LaunchedRank, object, HeadAddresses]:
    """(this process's rank, the pipeline config, the head's addresses); ValueError naming what to
    change when the launcher's environment, the arguments and the YAML disagree."""
    launched = LaunchedRank.from_environ(environ)
    if args.local_rank is not None and args.local_rank != launched.local_rank:
        raise ValueError(f"--local_rank={args.local_rank} but LOCAL_RANK={launched.local_rank}")
    config = load_config(args.config, list(args.overrides))
    launched.check_world(config.world_size)
    addresses = HeadAddresses(args.host or launched.master_addr, args.port)
    config.runtime.control_address = addresses.control_address
    return launched, config, addresses


def head_node(launched: LaunchedRank, addresses: HeadAddresses) -> HeadNode:
    """The head starts model rank 0 (its own launcher process's rank); a data server only when
    other nodes must fetch its files."""
    if launched.is_single_node:
        return HeadNode(model_ranks=(0,), control_bind=addresses.control_bind)
    return HeadNode(model_ranks=(0,), control_bind=addresses.control_bind, data_address=addresses.data_address,
                    data_bind=addresses.data_bind)


def serve_head(config, launched: LaunchedRank, addresses: HeadAddresses, is_quiet: bool = False) -> int:
    """Run the pipeline until SIGINT / SIGTERM; 1 when it could not start."""
    configure_logging(config, "head", 0)
    if not resolve_secret(config.runtime.secret):
        logger.warning("no runtime.secret / SPAVA_SECRET: anyone who reaches %s can submit work or pose as a worker",
                       addresses.control_address)
    try:
        with Pipeline.from_config(config, is_quiet=is_quiet, head=head_node(launched, addresses)):
            print(f"spava: serving on {addresses.control_address} ({launched.world_size} model ranks on "
                  f"{launched.num_nodes} node(s); Ctrl-C to stop); connect with "
                  f"Pipeline.connect({addresses.control_address!r}, secret=...)", flush=True)
            wait_for_signal()
    except RuntimeError as error:
        print(f"spava node: {error}", file=sys.stderr)
        return 1
    return 0


def serve_rank(config, launched: LaunchedRank, addresses: HeadAddresses, is_quiet: bool = False) -> int:
    """Run this process's model rank until the head says to stop (0) or a signal arrives."""
    shm_dir = config.runtime.shm_dir
    owner = owner_tag(new_pipeline_id())
    os.environ[OWNER_ENV] = owner  # files this rank fetches from the head are its own
    if not launched.is_single_node and launched.node_rank != 0:
        os.environ[DATA_ADDRESS_ENV] = addresses.data_address

    def exit_now(*_) -> None:
        sweep_owner(shm_dir, owner)
        os._exit(0)  # no interpreter teardown in the middle of a collective

    signal.signal(signal.SIGINT, exit_now)
    signal.signal(signal.SIGTERM, exit_now)
    die_with_parent()  # the launcher's agent: its processes end with it
    sweep_orphans(shm_dir, tempfile.gettempdir())
    configure_logging(config, "model", launched.rank)
    argv = ["--role", "model", "--rank", str(launched.rank), "--worker-id", f"model-{launched.rank}",
            "--config", "(resolved by spava.runtime.node)", "--control", addresses.control_address, "--dist-init", "env"]
    try:
        Worker(worker_args(argv + (["--quiet"] if is_quiet else [])), config).serve()
    except Exception:  # report it; the launcher sees the exit code
        logger.exception("model rank %d failed", launched.rank)
        return 1
    finally:
        sweep_owner(shm_dir, owner)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        launched, config, addresses = resolve(args, os.environ)
    except ValueError as error:
        print(f"spava node: {error}", file=sys.stderr)
        return 2
    os.environ[NODE_ENV] = launched.node_name  # names this node in shared-memory refs and lost-host reports
    if launched.is_head:
        return serve_head(config, launched, addresses, args.quiet)
    return serve_rank(config, launched, addresses, args.quiet)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: torch.distributed's atexit hooks may wait for gone peers
