"""`spava launch`: start a pipeline and serve requests until Ctrl-C, on one node or several.

One machine: `spava launch --config X.yaml` starts every worker here and prints the control address.
Several machines: run the same command on every node with the node topology, e.g.
    spava launch --config X.yaml --hostfile hosts --node-rank R        (deepspeed-style hostfile)
    spava launch --config X.yaml --nnodes 2 --node-rank R --master-addr 10.0.0.1 --master-port 29600
    srun spava launch --config X.yaml                                   (SLURM allocation)
The head node (rank 0) runs the scheduler, the video / layout workers and its share of the model
ranks; every other node runs its model ranks, which connect to the head. Set runtime.secret (or
SPAVA_SECRET) so that only members can connect. Clients use `Pipeline.connect(address, secret=...)`.
SIGINT or SIGTERM stops a node cleanly: its workers are stopped, its shared-memory files and temp
folder removed.
"""

from __future__ import annotations

import os
import signal
import threading

from spava.config import load_config
from spava.runtime.launch import LocalLauncher, free_port, local_specs
from spava.runtime.nodes import NodeLayout, is_slurm, layout_from_flags, layout_from_hostfile, layout_from_slurm
from spava.runtime.pipeline import Pipeline


def node_layout_from_args(args, world_size: int) -> NodeLayout | None:
    port = args.master_port
    if args.hostfile:
        return layout_from_hostfile(args.hostfile, args.node_rank, port)
    if args.nnodes and args.nnodes > 1:
        if args.node_rank is None or not args.master_addr:
            raise ValueError("--nnodes > 1 needs --node-rank and --master-addr")
        return layout_from_flags(args.nnodes, args.node_rank, args.master_addr, port, world_size, args.nproc_per_node)
    if is_slurm() and int(os.environ["SLURM_NNODES"]) > 1:
        return layout_from_slurm(dict(os.environ), port, world_size, args.nproc_per_node)
    return None


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM; the caller then closes everything it started."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):  # a timed wait, so the signal handler runs promptly
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_head(config, layout: NodeLayout | None) -> int:
    with Pipeline.from_config(config, node_layout=layout):
        print(f"spava: serving on {config.runtime.control_address} (Ctrl-C to stop); connect with "
              f"Pipeline.connect({config.runtime.control_address!r}, secret=...)", flush=True)
        _wait_for_signal()
    return 0


def _serve_node(config, layout: NodeLayout, config_path: str) -> int:
    """A non-head node: run this node's model ranks until they exit or we are stopped."""
    import tempfile

    from spava.comm.security import resolve_secret
    from spava.comm.shm import new_pipeline_id, owner_prefix, owner_tag, sweep_orphans, sweep_owner
    from spava.config import config_to_yaml

    owner = owner_tag(new_pipeline_id())
    sweep_orphans(config.runtime.shm_dir, tempfile.gettempdir())
    with tempfile.TemporaryDirectory(prefix=owner_prefix(owner)) as tmp:
        path = os.path.join(tmp, "pipeline.yaml")
        with open(path, "w") as handle:
            handle.write(config_to_yaml(config))
        os.environ.setdefault("SPAVA_NODE_NAME", f"node{layout.node_rank}")
        os.environ["SPAVA_DATA_ADDRESS"] = layout.data_address  # where this node's ranks fetch head tensors
        launcher = LocalLauncher(path, config.runtime.control_address, secret=resolve_secret(config.runtime.secret),
                                 owner=owner)
        try:
            for spec in local_specs(config, layout):
                launcher.start(spec, dist_port=layout.dist_port)
            print(f"spava: node {layout.node_rank} runs model ranks {list(layout.model_ranks(layout.node_rank))}, "
                  f"head at {config.runtime.control_address}", flush=True)
            _wait_for_signal()
        finally:
            launcher.stop_all()
            sweep_owner(config.runtime.shm_dir, owner)
    return 0


def serve(args) -> int:
    config = load_config(args.config, list(args.overrides))
    layout = node_layout_from_args(args, config.world_size)
    if layout is None:
        if config.runtime.control_address == "auto":
            config.runtime.control_address = f"tcp://127.0.0.1:{free_port()}"
        return _serve_head(config, None)
    layout.check(config.world_size)
    config.runtime.control_address = layout.control_address
    config.runtime.dist_address, config.runtime.dist_port = layout.master_addr, layout.dist_port
    if layout.is_head:
        os.environ.setdefault("SPAVA_NODE_NAME", "node0")
        return _serve_head(config, layout)
    return _serve_node(config, layout, args.config)
