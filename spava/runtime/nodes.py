"""Where the workers of a multi-node pipeline run (pure parsing; no sockets).

Three ways to describe the nodes, the same ones users know from DeepSpeed and torchrun:
  hostfile   `host slots=N` lines (deepspeed style); the first host is the head node
  flags      --nnodes / --node-rank / --master-addr / --master-port / --nproc-per-node (torchrun style)
  SLURM      SLURM_NNODES, SLURM_NODEID and SLURM_JOB_NODELIST of the allocation
Model ranks (encoder ranks first, then prefill ranks, as in the YAML) fill the nodes in order, `slots`
per node. The head node (node 0) also runs the scheduler and the video / layout workers; its control
socket listens on master_port, the model ranks meet at master_port + 1 and the head serves its
shared-memory tensors to the other nodes at master_port + 2.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeLayout:
    """The nodes of one pipeline and which model ranks each runs."""

    hosts: tuple[str, ...]
    slots: tuple[int, ...]
    node_rank: int
    master_port: int

    @property
    def num_nodes(self) -> int:
        return len(self.hosts)

    @property
    def master_addr(self) -> str:
        return self.hosts[0]

    @property
    def is_head(self) -> bool:
        return self.node_rank == 0

    @property
    def control_address(self) -> str:
        return f"tcp://{self.master_addr}:{self.master_port}"

    @property
    def dist_port(self) -> int:
        return self.master_port + 1

    @property
    def data_address(self) -> str:
        """The head's data server (shared-memory tensors for the other nodes): master_port + 2."""
        return f"tcp://{self.master_addr}:{self.master_port + 2}"

    def model_ranks(self, node_rank: int) -> range:
        start = sum(self.slots[:node_rank])
        return range(start, start + self.slots[node_rank])

    def node_of_rank(self, rank: int) -> int:
        for node in range(self.num_nodes):
            if rank in self.model_ranks(node):
                return node
        raise ValueError(f"model rank {rank} is on no node")

    def check(self, world_size: int) -> None:
        if sum(self.slots) != world_size:
            raise ValueError(
                f"the nodes provide {sum(self.slots)} model ranks (slots {list(self.slots)}) but the pipeline "
                f"needs {world_size} (encode.devices + prefill.devices); fix the hostfile slots / --nproc-per-node"
            )
        if not 0 <= self.node_rank < self.num_nodes:
            raise ValueError(f"node rank {self.node_rank} outside [0, {self.num_nodes})")


def parse_hostfile(text: str) -> list[tuple[str, int]]:
    """`host slots=N` lines (blank lines and # comments ignored) -> [(host, slots)]."""
    hosts = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"(\S+)(?:\s+slots\s*=\s*(\d+))?", line)
        if match is None:
            raise ValueError(f"hostfile line {number}: {line!r} is not 'host slots=N'")
        hosts.append((match.group(1), int(match.group(2) or 1)))
    if not hosts:
        raise ValueError("the hostfile lists no hosts")
    return hosts


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """'gpu[01-03,07],login1' -> ['gpu01', 'gpu02', 'gpu03', 'gpu07', 'login1'] (SLURM's compact form)."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            for number in range(int(first), int(last or first) + 1):
                hosts.append(f"{prefix}{number:0{len(first)}d}")
    return hosts


def _even_slots(num_nodes: int, world_size: int, per_node: int | None) -> tuple[int, ...]:
    if per_node is not None:
        return (per_node,) * num_nodes
    base, extra = divmod(world_size, num_nodes)
    return tuple(base + (1 if node < extra else 0) for node in range(num_nodes))


def layout_from_hostfile(path: str, node_rank: int | None, master_port: int) -> NodeLayout:
    with open(path) as handle:
        hosts = parse_hostfile(handle.read())
    names = [host for host, _ in hosts]
    if node_rank is None:
        here = {socket.gethostname(), socket.getfqdn()}
        matches = [i for i, host in enumerate(names) if host in here]
        if len(matches) != 1:
            raise ValueError("cannot tell which hostfile line is this node; pass --node-rank")
        node_rank = matches[0]
    return NodeLayout(tuple(names), tuple(slots for _, slots in hosts), node_rank, master_port)


def layout_from_flags(nnodes: int, node_rank: int, master_addr: str, master_port: int, world_size: int,
                      nproc_per_node: int | None) -> NodeLayout:
    slots = _even_slots(nnodes, world_size, nproc_per_node)
    hosts = (master_addr,) + tuple(f"node{i}" for i in range(1, nnodes))  # only the head's address is dialled
    return NodeLayout(hosts, slots, node_rank, master_port)


def layout_from_slurm(environ: dict, master_port: int, world_size: int, nproc_per_node: int | None) -> NodeLayout:
    hosts = expand_slurm_nodelist(environ["SLURM_JOB_NODELIST"])
    if len(hosts) != int(environ["SLURM_NNODES"]):
        raise ValueError(f"SLURM_JOB_NODELIST names {len(hosts)} hosts but SLURM_NNODES={environ['SLURM_NNODES']}")
    slots = _even_slots(len(hosts), world_size, nproc_per_node)
    return NodeLayout(tuple(hosts), slots, int(environ["SLURM_NODEID"]), master_port)


def is_slurm(environ=os.environ) -> bool:
    return all(key in environ for key in ("SLURM_JOB_NODELIST", "SLURM_NNODES", "SLURM_NODEID"))
