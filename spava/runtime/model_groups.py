"""Which model ranks run which request: the encoder group and the prefill group (scheduler state).

Colocated (no encoder ranks), one group does everything and runs one request at a time.
Disaggregated, the encoder ranks and the prefill ranks are two groups that both take requests in
sequence order (`ModelTaskReq.seq`): as soon as the encoders finished request i they get request
i+1, while the prefill ranks still run i, so encoding of the next request overlaps the prefill (and
decoding) of the current one. The encoders run at most one request ahead: the embeddings they
send for i+1 wait in the point-to-point transfer until the prefill ranks receive them, so a
deeper queue would only hold more device memory without finishing anything sooner.

No sockets here: the scheduler sends the tasks this module hands out.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from spava.runtime.state import WorkerState


@dataclass
class ModelGroup:
    """Ranks that run the same request together (all encoders, or all prefill ranks)."""

    name: str  # "encode" | "prefill" | "model" (colocated)
    workers: list[WorkerState]
    request_id: Optional[str] = None
    since: float = 0.0

    @property
    def is_idle(self) -> bool:
        return self.request_id is None and all(w.is_idle for w in self.workers)

    def assign(self, request_id: str) -> None:
        self.request_id, self.since = request_id, time.monotonic()
        for worker in self.workers:
            worker.request_id = request_id

    def release(self, worker_id: str, request_id: str) -> None:
        """A worker of this group reported the end of `request_id`."""
        for worker in self.workers:
            if worker.spec.worker_id == worker_id and worker.request_id == request_id:
                worker.request_id = None
        if self.request_id == request_id and all(w.request_id is None for w in self.workers):
            self.request_id = None

    def reset(self) -> None:
        self.request_id = None
        for worker in self.workers:
            worker.request_id = None


@dataclass
class ModelGroups:
    """The encoder group (disaggregated only) feeding the prefill group, in sequence order."""

    prefill: ModelGroup
    encode: Optional[ModelGroup] = None
    # tasks the encoders took and the prefill ranks not yet: a task once given to the encoders is
    # always given to the prefill ranks too (even if its request failed meanwhile), since the
    # encoders' point-to-point sends must be matched by receives in sequence order
    encoded: collections.deque = field(default_factory=collections.deque)
    seq: int = 0

    @classmethod
    def from_workers(cls, model_workers: list[WorkerState], num_encoders: int) -> "ModelGroups":
        """Model ranks in rank order: ranks < num_encoders are the encoders."""
        ordered = sorted(model_workers, key=lambda w: w.spec.rank)
        if num_encoders == 0:
            return cls(prefill=ModelGroup("model", ordered))
        return cls(prefill=ModelGroup("prefill", ordered[num_encoders:]),
                   encode=ModelGroup("encode", ordered[:num_encoders]))

    @property
    def groups(self) -> list[ModelGroup]:
        return [g for g in (self.encode, self.prefill) if g is not None]

    def busy_groups(self) -> list[ModelGroup]:
        return [g for g in self.groups if g.request_id is not None]

    def next_tasks(self, queue: collections.deque, make_task: Callable[[str, int], Any]) -> list[tuple[Any, ModelGroup, bool]]:
        """Hand out work: (task, group, is_new) for each group that starts a request now.

        `queue` holds request ids ready for the model stage (popped here); `make_task(request_id,
        seq)` builds the task. `is_new` is True when the request enters the model stage.
        """
        started = self._hand_over()
        if queue and (self.encode or self.prefill).is_idle and not self.encoded:
            self.seq += 1
            task = make_task(queue.popleft(), self.seq)
            if self.encode is None:
                self.prefill.assign(task.request_id)
                return [(task, self.prefill, True)]
            self.encode.assign(task.request_id)
            self.encoded.append(task)
            started.append((task, self.encode, True))
        return started + self._hand_over()

    def _hand_over(self) -> list:
        """The oldest encoder task to the prefill ranks, when they are free."""
        if not self.encoded or not self.prefill.is_idle:
            return []
        task = self.encoded.popleft()
        self.prefill.assign(task.request_id)
        return [(task, self.prefill, False)]

    def release(self, worker_id: str, request_id: str) -> None:
        for group in self.groups:
            group.release(worker_id, request_id)

    def reset(self) -> None:
        """After a group restart: no group runs anything, nothing waits for the prefill ranks."""
        for group in self.groups:
            group.reset()
        self.encoded.clear()
