"""The only module that calls torch.distributed collectives (NCCL on GPU, gloo on CPU).

`SPComm` wraps one process group of a sequence-parallel stage and exposes exactly the operations
spava needs; with world_size 1 every operation is a local no-op, so single-GPU code takes the same
path. `RingExchange` is the P2P ring used by ring attention: queue sends/receives, commit them as one
batch, compute, then wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist


def _all_gather_into_tensor():
    """Version shim: torch >= 2.13 renames all_gather_into_tensor to all_gather_single."""
    return getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass
class Pending:
    """Handles of asynchronous collectives; `wait()` blocks until all of them completed."""

    works: list = field(default_factory=list)

    def wait(self) -> None:
        for work in self.works:
            work.wait()
        self.works.clear()


class SPComm:
    """Collectives over one sequence-parallel process group (None = the default group)."""

    def __init__(self, group: dist.ProcessGroup | None = None, *, is_single: bool = False):
        self.group = group
        if is_single or not (dist.is_available() and dist.is_initialized()):
            self.rank, self.world_size = 0, 1
        else:
            self.rank = dist.get_rank(group)
            self.world_size = dist.get_world_size(group)

    @classmethod
    def single(cls) -> "SPComm":
        """A world of one rank: every collective is local."""
        return cls(None, is_single=True)

    def global_rank(self, group_rank: int) -> int:
        if self.group is None:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    def all_gather_into(self, output: torch.Tensor, tensor: torch.Tensor, *, async_op: bool = False) -> Pending:
        """Gather `tensor` from every rank into `output` (`[W * tensor.numel()]` contiguous, rank order)."""
        if self.world_size == 1:
            output.view(-1).copy_(tensor.reshape(-1))
            return Pending()
        # flat views: gloo checks that output is exactly W copies of the input's shape
        flat_out, flat_in = output.view(-1), tensor.contiguous().view(-1)
        work = _all_gather_into_tensor()(flat_out, flat_in, group=self.group, async_op=async_op)
        return Pending([work] if async_op else [])

    def all_gather_stacked(self, tensor: torch.Tensor, *, async_op: bool = False) -> tuple[torch.Tensor, Pending]:
        """Gather equal-shaped tensors: `[*shape]` -> `[W, *shape]` (valid after `Pending.wait()`)."""
        output = torch.empty((self.world_size, *tensor.shape), dtype=tensor.dtype, device=tensor.device)
        return output, self.all_gather_into(output, tensor, async_op=async_op)

    def all_to_all(
        self, output: torch.Tensor, tensor: torch.Tensor, output_split_sizes: list[int], input_split_sizes: list[int]
    ) -> None:
        """Uneven all-to-all over flat buffers: piece i of `tensor` goes to rank i."""
        if self.world_size == 1:
            output.copy_(tensor)
            return
        dist.all_to_all_single(output, tensor, output_split_sizes, input_split_sizes, group=self.group)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place (a tensor-parallel layer's partial outputs)."""
        if self.world_size > 1:
            dist.all_reduce(tensor, group=self.group)
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        """Broadcast from group rank `src`, in place. CPU tensors ride through the GPU on NCCL groups."""
        if self.world_size == 1:
            return tensor
        if tensor.device.type == "cpu" and dist.get_backend(self.group) == "nccl":
            staged = tensor.to(torch.device("cuda", torch.cuda.current_device()))
            dist.broadcast(staged, self.global_rank(src), group=self.group)
            tensor.copy_(staged.cpu())
            return tensor
        dist.broadcast(tensor, self.global_rank(src), group=self.group)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier(group=self.group)

    def ring(self) -> "RingExchange":
        return RingExchange(self)


class RingExchange:
    """Send to rank+1 and receive from rank-1, as one batch of P2P operations.

    Protocol: `send_recv` (any number of times) -> `commit` -> compute -> `wait`. Misuse raises.
    """

    def __init__(self, comm: SPComm):
        self.comm = comm
        self._ops: list = []
        self._works: list | None = None
        self._inflight: list = []  # keeps committed tensors alive until wait()
        self._next = comm.global_rank((comm.rank + 1) % comm.world_size)
        self._prev = comm.global_rank((comm.rank - 1) % comm.world_size)

    def send_recv(self, send: torch.Tensor, recv: torch.Tensor) -> None:
        if self._works is not None:
            raise RuntimeError("RingExchange.send_recv called after commit and before wait")
        self._ops.append(dist.P2POp(dist.isend, send.contiguous(), self._next, self.comm.group))
        self._ops.append(dist.P2POp(dist.irecv, recv, self._prev, self.comm.group))

    def commit(self) -> None:
        if self._works is not None:
            raise RuntimeError("RingExchange.commit called twice without wait")
        if not self._ops:
            raise RuntimeError("RingExchange.commit called with nothing queued")
        self._works = dist.batch_isend_irecv(self._ops)
        self._inflight, self._ops = self._ops, []

    def wait(self) -> None:
        if self._works is None:
            raise RuntimeError("RingExchange.wait called before commit")
        for work in self._works:
            work.wait()
        self._works, self._inflight = None, []


def send_async(tensor: torch.Tensor, dst: int, tag: int = 0) -> Pending:
    """Point-to-point send to global rank `dst` (encoder -> prefill embeddings); keep `tensor` alive."""
    return Pending([dist.isend(tensor.contiguous(), dst, tag=tag)])


def recv_async(tensor: torch.Tensor, src: int, tag: int = 0) -> Pending:
    """Point-to-point receive from global rank `src` into `tensor` (valid after `wait`)."""
    return Pending([dist.irecv(tensor, src, tag=tag)])


def init_world(backend: str, address: str, port: int, rank: int, world_size: int, timeout_s: float) -> None:
    """Join the torch.distributed world of the model ranks (TCP rendezvous at address:port)."""
    import datetime

    dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def init_world_from_env(backend: str, rank: int, world_size: int, timeout_s: float) -> None:
    """Join the world an external launcher (torchrun, deepspeed) set up: the rendezvous at
    MASTER_ADDR:MASTER_PORT from the environment (`env://`), whose RANK / WORLD_SIZE must agree."""
    import datetime
    import os

    launched = (os.environ.get("RANK"), os.environ.get("WORLD_SIZE"))
    if launched != (str(rank), str(world_size)):
        raise ValueError(f"the launcher's RANK / WORLD_SIZE are {launched}, but this worker is rank {rank} of "
                         f"{world_size}")
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


# how gloo's TCP transport reports a peer whose process or machine went away
_PEER_LOSS_TEXTS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def is_peer_failure(error: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (NCCL and the store raise
    torch.distributed's DistError; gloo a RuntimeError naming the closed connection)."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(error, dist_error):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _PEER_LOSS_TEXTS)


def new_group(ranks: list[int]) -> dist.ProcessGroup | None:
    """A sub-group (every world rank must call this, in the same order); None when it is the world."""
    if len(ranks) == dist.get_world_size():
        return None
    return dist.new_group(ranks)


def destroy_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def end_spawned_rank() -> None:
    """Successful end of a spawned rank: barrier, leave the group, exit without interpreter teardown.

    gloo's background threads can abort the process while Python tears down ("terminate called
    without an active exception"), which would turn a finished run into a crashed one. Skipping the
    teardown also skips multiprocessing's finalizers, which unlink the named semaphores this process
    made (tqdm's lock, made by torch.compile's progress bar): they run first, or the parent's
    resource tracker reports them as leaked when it exits.
    """
    import multiprocessing.util
    import os
    import sys

    dist.barrier()
    dist.destroy_process_group()
    multiprocessing.util._run_finalizers(0)  # the atexit hook's own call, minus the teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
