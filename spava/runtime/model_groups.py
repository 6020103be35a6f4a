"""Which model ranks run which request: the encoder group and the prefill group (scheduler state).

Colocated (no encoder ranks), one group does everything and runs one request at a time.
Disaggregated, the encoder ranks and the prefill ranks are two groups that both take requests in
sequence order (`ModelTaskReq.seq`): as soon as the encoders finished request i they get the next
requests, while the prefill ranks still run i, so encoding overlaps the prefill (and decoding) of
the current request. The encoders take the requests ready at that moment as one batch (up to
`encode.max_batch_requests` of them and `encode.max_batch_patches` pixel patches in total, see
`EncodeBatchLimits`) and encode all their temporal grids in one vision-tower call; a batch of one
is the old one-request hand-out. The prefill ranks still take the requests one by one. The
encoders run at most one batch ahead: they take a new batch only once the prefill ranks took every
request of the last one, since the embeddings they send wait in the point-to-point transfer until
the prefill ranks receive them, so a deeper queue would only hold more device memory without
finishing anything sooner.

No sockets here: the scheduler sends the tasks this module hands out.
"""

from __future__ import annotations

import collections
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional, Sequence

from spava.runtime.state import WorkerState


def num_patches(grid_thw: Sequence[Sequence[int]]) -> int:
    """Pixel patches of a request (`LayoutTaskOutput.grid_thw`, (t, h, w) per vision item): the rows
    of its `pixel_values` `[P, C*T*p*p]`, i.e. the vision tower's work; 0 for a text-only request."""
    return sum(t * h * w for t, h, w in grid_thw)


@dataclass(frozen=True)
class EncodeBatchLimits:
    """How many ready requests the encoder ranks take at once (`encode.max_batch_requests` /
    `encode.max_batch_patches`); the defaults are one request at a time."""

    max_requests: int = 1
    max_patches: int = 300_000

    def take(self, patches: Sequence[int]) -> int:
        """How many of the ready requests (their patch counts, in queue order) form the next batch.

        The first always (alone when it is larger than `max_patches`), then the following ones while
        both limits hold; it stops at the first one that does not fit, so requests keep their order.
        """
        count, total = 0, 0
        for size in patches[: self.max_requests]:
            if count and total + size > self.max_patches:
                break
            count, total = count + 1, total + size
        return count


class Handout(NamedTuple):
    """Work for one group: one task (prefill, colocated), or a batch of tasks (encoders), seq order."""

    tasks: tuple
    group: "ModelGroup"
    is_new: bool  # the requests enter the model stage now


@dataclass
class ModelGroup:
    """Ranks that run the same requests together (all encoders, or all prefill ranks)."""

    name: str  # "encode" | "prefill" | "model" (colocated)
    workers: list[WorkerState]
    request_ids: tuple[str, ...] = ()  # what it runs: one request, or an encoder batch (seq order)
    since: float = 0.0
    pending: dict[str, list[str]] = field(default_factory=dict)  # worker id -> requests it has not ended yet

    @property
    def request_id(self) -> Optional[str]:
        """The first request it runs, None when it runs nothing."""
        return self.request_ids[0] if self.request_ids else None

    @property
    def is_idle(self) -> bool:
        return not self.request_ids and all(w.is_idle for w in self.workers)

    def assign(self, request_ids: Sequence[str]) -> None:
        """Run these requests: the group stays busy until every worker reported the end of each."""
        self.request_ids, self.since = tuple(request_ids), time.monotonic()
        self.pending = {w.spec.worker_id: list(request_ids) for w in self.workers}
        for worker in self.workers:
            worker.request_id = self.request_ids[0]

    def holds(self, request_id: str) -> bool:
        """Some worker of the group has not yet reported the end of `request_id`."""
        return any(request_id in pending for pending in self.pending.values())

    def release(self, worker_id: str, request_id: str) -> None:
        """A worker of this group reported the end of `request_id` (output or error)."""
        pending = self.pending.get(worker_id)
        if pending is None or request_id not in pending:
            return  # not ours, or a late report from before a reset
        pending.remove(request_id)
        for worker in self.workers:
            if worker.spec.worker_id == worker_id:
                worker.request_id = pending[0] if pending else None
        if not any(self.pending.values()):
            self.request_ids, self.pending = (), {}

    def reset(self) -> None:
        self.request_ids, self.pending = (), {}
        for worker in self.workers:
            worker.request_id = None


@dataclass
class ModelGroups:
    """The encoder group (disaggregated only) feeding the prefill group, in sequence order."""

    prefill: ModelGroup
    encode: Optional[ModelGroup] = None
    limits: EncodeBatchLimits = field(default_factory=EncodeBatchLimits)
    # tasks the encoders took and the prefill ranks not yet: a task once given to the encoders is
    # always given to the prefill ranks too (even if its request failed meanwhile), since the
    # encoders' point-to-point sends must be matched by receives in sequence order
    encoded: collections.deque = field(default_factory=collections.deque)
    seq: int = 0

    @classmethod
    def from_workers(cls, model_workers: list[WorkerState], num_encoders: int,
                     limits: EncodeBatchLimits | None = None) -> "ModelGroups":
        """Model ranks in rank order: ranks < num_encoders are the encoders."""
        ordered = sorted(model_workers, key=lambda w: w.spec.rank)
        limits = limits or EncodeBatchLimits()
        if num_encoders == 0:
            return cls(prefill=ModelGroup("model", ordered), limits=limits)
        return cls(prefill=ModelGroup("prefill", ordered[num_encoders:]),
                   encode=ModelGroup("encode", ordered[:num_encoders]), limits=limits)

    @property
    def groups(self) -> list[ModelGroup]:
        return [g for g in (self.encode, self.prefill) if g is not None]

    def busy_groups(self) -> list[ModelGroup]:
        return [g for g in self.groups if g.request_ids]

    def holds(self, request_id: str) -> bool:
        """A model rank was given `request_id` and has not reported its end, or will still get it
        (it waits in `encoded`): its inputs must stay readable."""
        return any(g.holds(request_id) for g in self.groups) or any(t.request_id == request_id for t in self.encoded)

    def next_tasks(self, queue: collections.deque, make_task: Callable[[str, int], Any],
                   patches_of: Callable[[str], int] | None = None) -> list[Handout]:
        """Hand out work: one `Handout` for each group that starts something now.

        `queue` holds request ids ready for the model stage (popped here); `make_task(request_id,
        seq)` builds a task; `patches_of(request_id)` is a request's patch count (`num_patches`;
        None counts 0 for every request, so only `limits.max_requests` bounds a batch).
        """
        started = self._hand_over()
        if queue and (self.encode or self.prefill).is_idle and not self.encoded:
            if self.encode is None:
                task = self._make(queue.popleft(), make_task)
                self.prefill.assign([task.request_id])
                return [Handout((task,), self.prefill, True)]
            ready = itertools.islice(queue, self.limits.max_requests)
            count = self.limits.take([patches_of(r) if patches_of else 0 for r in ready])
            tasks = tuple(self._make(queue.popleft(), make_task) for _ in range(count))
            self.encode.assign([t.request_id for t in tasks])
            self.encoded.extend(tasks)
            started.append(Handout(tasks, self.encode, True))
        return started + self._hand_over()

    def _make(self, request_id: str, make_task: Callable[[str, int], Any]) -> Any:
        self.seq += 1
        return make_task(request_id, self.seq)

    def _hand_over(self) -> list[Handout]:
        """The oldest encoder task to the prefill ranks, when they are free."""
        if not self.encoded or not self.prefill.is_idle:
            return []
        task = self.encoded.popleft()
        self.prefill.assign([task.request_id])
        return [Handout((task,), self.prefill, False)]

    def release(self, worker_id: str, request_id: str) -> None:
        for group in self.groups:
            group.release(worker_id, request_id)

    def reset(self) -> None:
        """After a group restart: no group runs anything, nothing waits for the prefill ranks."""
        for group in self.groups:
            group.reset()
        self.encoded.clear()
