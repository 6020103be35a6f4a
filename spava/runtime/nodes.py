"""Where the processes of a launcher-started world run (pure: environment and addresses, no sockets).

Across machines the torch.distributed world is started by an existing launcher: torchrun (c10d or
static rendezvous) or the deepspeed launcher (hostfile). Each process it starts is one model rank
and reads what the launcher tells it from its environment (`LaunchedRank.from_environ`):

    RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT          both launchers
    LOCAL_WORLD_SIZE, GROUP_RANK, GROUP_WORLD_SIZE                   torchrun
    LOCAL_SIZE, CROSS_RANK, CROSS_SIZE                               deepspeed

Global rank 0 is the head: besides model rank 0 it runs the scheduler, the video and layout workers,
the control socket that clients connect to (`tcp://HOST:PORT`, HOST = `--host` or MASTER_ADDR) and,
when the world spans several nodes, a data server at PORT + 1 from which the other nodes fetch its
shared-memory files. Every process derives both addresses from the same arguments, so nothing has
to be exchanged before they connect. Devices: the YAML's `encode.devices` / `prefill.devices` give
the number of model ranks and their kind; under a launcher a CUDA rank runs on `cuda:LOCAL_RANK`
(the launcher's GPUs of that node, as chosen by CUDA_VISIBLE_DEVICES), a CPU rank on the CPU.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# what each launcher sets; the first name found wins
_LOCAL_WORLD_SIZE_KEYS = ("LOCAL_WORLD_SIZE", "LOCAL_SIZE")
_NODE_RANK_KEYS = ("GROUP_RANK", "CROSS_RANK")
_NUM_NODES_KEYS = ("GROUP_WORLD_SIZE", "CROSS_SIZE")
DEFAULT_CONTROL_PORT = 29600


def _env_int(environ, name: str) -> int:
    text = environ.get(name)
    if text is None:
        raise ValueError(f"{name} is not set: start spava.runtime.node with torchrun or the deepspeed launcher "
                         "(they set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT)")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a whole number") from None


def _first_int(environ, names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in environ:
            return _env_int(environ, name)
    return None


@dataclass(frozen=True)
class LaunchedRank:
    """One process of a launcher-started world: its global and local rank and its node."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str

    @classmethod
    def from_environ(cls, environ) -> LaunchedRank:
        """Read the launcher's variables (see the module docstring); a missing or bad one is a
        ValueError naming it."""
        rank, world_size, local_rank = (_env_int(environ, key) for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        master_addr = environ.get("MASTER_ADDR", "")
        if not master_addr:
            raise ValueError("MASTER_ADDR is not set: the launcher names the head node there")
        local_world_size = _first_int(environ, _LOCAL_WORLD_SIZE_KEYS) or world_size
        node_rank = _first_int(environ, _NODE_RANK_KEYS)
        num_nodes = _first_int(environ, _NUM_NODES_KEYS)
        launched = cls(rank, world_size, local_rank, local_world_size,
                       rank // local_world_size if node_rank is None else node_rank,
                       -(-world_size // local_world_size) if num_nodes is None else num_nodes, master_addr)
        launched.check()
        return launched

    def check(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"RANK={self.rank} is outside [0, WORLD_SIZE={self.world_size})")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(f"LOCAL_RANK={self.local_rank} is outside [0, {self.local_world_size}) "
                             "(LOCAL_WORLD_SIZE / LOCAL_SIZE)")
        if not 0 <= self.node_rank < self.num_nodes:
            raise ValueError(f"the node rank {self.node_rank} is outside [0, {self.num_nodes}) "
                             "(GROUP_RANK / CROSS_RANK, GROUP_WORLD_SIZE / CROSS_SIZE)")

    @property
    def is_head(self) -> bool:
        """Global rank 0: the process that also runs the scheduler and the CPU workers."""
        return self.rank == 0

    @property
    def is_single_node(self) -> bool:
        return self.num_nodes == 1

    @property
    def node_name(self) -> str:
        """This node's name in shared-memory references and lost-host reports: `node<k>`."""
        return f"node{self.node_rank}"

    def check_world(self, num_model_ranks: int) -> None:
        """The launcher must start exactly one process per model rank of the YAML."""
        if self.world_size != num_model_ranks:
            raise ValueError(
                f"the launcher started WORLD_SIZE={self.world_size} processes but the pipeline has "
                f"{num_model_ranks} model ranks (encode.devices + prefill.devices): start nodes x processes per "
                f"node = {num_model_ranks} (torchrun --nnodes / --nproc-per-node, the deepspeed hostfile's slots)")


def launched_device(configured: str, local_rank: int) -> str:
    """The device of a model rank under a launcher: `cuda:LOCAL_RANK` when the YAML names a CUDA
    device for it (whatever its index: the YAML lists the ranks of every node), else the CPU."""
    return f"cuda:{local_rank}" if configured.startswith("cuda") else "cpu"


@dataclass(frozen=True)
class HeadAddresses:
    """Where the head listens: the control socket at `host:port`, its data server at `host:port+1`."""

    host: str
    port: int = DEFAULT_CONTROL_PORT

    def __post_init__(self):
        if not self.host:
            raise ValueError("the head's address is empty: pass --host or set MASTER_ADDR")
        if not 0 < self.port < 65535:
            raise ValueError(f"--port {self.port} must be in [1, 65534] (the data server takes port + 1)")

    @property
    def control_address(self) -> str:
        return f"tcp://{_url_host(self.host)}:{self.port}"

    @property
    def data_address(self) -> str:
        return f"tcp://{_url_host(self.host)}:{self.port + 1}"

    @property
    def control_bind(self) -> str:
        return f"tcp://{_bind_host(self.host)}:{self.port}"

    @property
    def data_bind(self) -> str:
        return f"tcp://{_bind_host(self.host)}:{self.port + 1}"


def _ip(host: str):
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _url_host(host: str) -> str:
    address = _ip(host)
    return f"[{address}]" if address is not None and address.version == 6 else host


def _bind_host(host: str) -> str:
    """An IP address is bound as is; a host name on every interface (`*`): a name may resolve to a
    loopback address on its own machine (127.0.1.1 on Debian) while the others reach it elsewhere."""
    return _url_host(host) if _ip(host) is not None else "*"


@dataclass(frozen=True)
class HeadNode:
    """What the head of a launcher-started world runs besides a one-machine pipeline's workers.

    `model_ranks`: the model ranks the head's pipeline starts itself (they join the launcher's world
    from its environment); the others are started by the launcher and connect on their own.
    `data_address` / `data_bind`: the data server for the other nodes; None on a single node, where
    every rank maps the head's files directly (and reads frames while they are decoded).
    `control_bind`: where the scheduler binds the control socket it is reached at.
    """

    model_ranks: tuple[int, ...]
    control_bind: str
    data_address: str | None = None
    data_bind: str | None = None
