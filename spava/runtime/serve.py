"""`spava launch`: start a pipeline and serve requests until Ctrl-C, on one machine or several.

One machine: `spava launch --config X.yaml` starts every worker here and prints the control address.
Several machines: the torch.distributed world is started by torchrun. Given torchrun's node options,
`spava launch` runs torchrun (`python -m torch.distributed.run`) on this node with them, and torchrun
runs `spava.runtime.node` once per model rank:
    spava launch --config X.yaml --nnodes 2 --rdzv-endpoint HEAD:29400                  (c10d, every node alike)
    spava launch --config X.yaml --nnodes 2 --node-rank R --master-addr HEAD              (static rendezvous)
`--nproc-per-node` defaults to the model ranks divided evenly over the nodes. The process of global
rank 0 is the head: it runs the scheduler, the video / layout workers and the control socket at
--port (29600) and prints its address. Set runtime.secret (or SPAVA_SECRET) so that only members can
connect. Clients use `Pipeline.connect(address, secret=...)`. SIGINT or SIGTERM stops a node cleanly:
its workers are stopped, its shared-memory files and temp folder removed.
"""

from __future__ import annotations

import os
import shlex
import sys

from spava.config import load_config
from spava.runtime.launch import free_port
from spava.runtime.node import wait_for_signal
from spava.runtime.pipeline import Pipeline


def uses_torchrun(args) -> bool:
    """Whether any of torchrun's node options was given (then torchrun starts the ranks)."""
    return any(value is not None for value in (args.nnodes, args.rdzv_endpoint, args.master_addr, args.node_rank))


def torchrun_argv(args, world_size: int) -> list[str]:
    """`python -m torch.distributed.run ... -m spava.runtime.node ...` for this node; ValueError
    naming the option to fix when the node options are incomplete or do not fit the pipeline."""
    if args.nnodes is None or args.nnodes < 1:
        raise ValueError("--nnodes N (the number of machines) is needed with --rdzv-endpoint / --master-addr")
    per_node = args.nproc_per_node
    if per_node is None:
        if world_size % args.nnodes:
            raise ValueError(f"the pipeline's {world_size} model ranks (encode.devices + prefill.devices) do not "
                             f"split evenly over {args.nnodes} nodes, and torchrun starts as many on each: change "
                             "the device lists or --nnodes")
        per_node = world_size // args.nnodes
    if per_node * args.nnodes != world_size:
        raise ValueError(f"--nnodes {args.nnodes} x --nproc-per-node {per_node} = {per_node * args.nnodes} processes, "
                         f"but the pipeline has {world_size} model ranks (encode.devices + prefill.devices)")
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(args.nnodes),
            "--nproc-per-node", str(per_node), "--max-restarts", "0"]
    if args.rdzv_endpoint:
        if args.master_addr is not None or args.node_rank is not None:
            raise ValueError("pass either --rdzv-endpoint (c10d) or --node-rank with --master-addr (static), not both")
        argv += ["--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint]
        if args.rdzv_conf:
            argv += ["--rdzv-conf", args.rdzv_conf]
    elif args.rdzv_conf:
        raise ValueError("--rdzv-conf configures the c10d rendezvous: pass --rdzv-endpoint too")
    elif args.nnodes > 1:
        if args.master_addr is None or args.node_rank is None:
            raise ValueError("several nodes need --rdzv-endpoint HEAD:PORT (c10d), or --node-rank R and "
                             "--master-addr HEAD (static rendezvous)")
        argv += ["--node-rank", str(args.node_rank), "--master-addr", args.master_addr,
                 "--master-port", str(args.master_port)]
    else:
        argv += ["--standalone"]
    if args.local_addr:
        argv += ["--local-addr", args.local_addr]
    argv += ["-m", "spava.runtime.node", "--port", str(args.port)]
    if args.host:
        argv += ["--host", args.host]
    if args.config:
        argv += ["--config", args.config]
    return argv + list(args.overrides)


def _serve_one_machine(config) -> int:
    if config.runtime.control_address == "auto":
        config.runtime.control_address = f"tcp://127.0.0.1:{free_port()}"
    with Pipeline.from_config(config):
        print(f"spava: serving on {config.runtime.control_address} (Ctrl-C to stop); connect with "
              f"Pipeline.connect({config.runtime.control_address!r}, secret=...)", flush=True)
        wait_for_signal()
    return 0


def serve(args) -> int:
    config = load_config(args.config, list(args.overrides))
    if not uses_torchrun(args):
        return _serve_one_machine(config)
    argv = torchrun_argv(args, config.world_size)
    print(f"spava launch: {shlex.join(argv)}", file=sys.stderr, flush=True)
    os.execv(sys.executable, argv)  # torchrun takes over this process: its signals and exit code are the job's
    return 1  # not reached

