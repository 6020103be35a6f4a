"""The scheduler's model-group hand-out (pure): colocated runs one request at a time; disaggregated
encoders take request i+1 while the prefill ranks run i, at most one ahead, in sequence order."""

from __future__ import annotations

import collections
from dataclasses import dataclass

from spava.runtime.launch import WorkerSpec
from spava.runtime.model_groups import ModelGroups
from spava.runtime.state import WorkerState


@dataclass
class Task:
    request_id: str
    seq: int


def _workers(num):
    return [WorkerState(WorkerSpec(f"model{r}", "model", r), is_ready=True) for r in range(num)]


def _finish(groups, group, request_id):
    for worker in group.workers:
        groups.release(worker.spec.worker_id, request_id)


def test_colocated_runs_one_request_at_a_time():
    groups = ModelGroups.from_workers(_workers(2), num_encoders=0)
    queue = collections.deque(["a", "b"])
    started = groups.next_tasks(queue, Task)
    assert [(t.request_id, t.seq, g.name, new) for t, g, new in started] == [("a", 1, "model", True)]
    assert groups.next_tasks(queue, Task) == []
    _finish(groups, groups.prefill, "a")
    assert [(t.request_id, t.seq) for t, _, _ in groups.next_tasks(queue, Task)] == [("b", 2)]


def test_disaggregated_encoders_run_one_ahead():
    groups = ModelGroups.from_workers(_workers(3), num_encoders=1)
    assert [w.spec.rank for w in groups.encode.workers] == [0]
    queue = collections.deque(["a", "b", "c"])
    started = groups.next_tasks(queue, Task)  # a to the encoders, then at once to the prefill ranks
    assert [(t.request_id, g.name, new) for t, g, new in started] == [("a", "encode", True), ("a", "prefill", False)]
    _finish(groups, groups.encode, "a")
    started = groups.next_tasks(queue, Task)  # b encodes while a is still in prefill
    assert [(t.request_id, t.seq, g.name) for t, g, _ in started] == [("b", 2, "encode")]
    _finish(groups, groups.encode, "b")
    assert groups.next_tasks(queue, Task) == []  # c waits: b's embeddings wait for the prefill ranks
    _finish(groups, groups.prefill, "a")
    started = groups.next_tasks(queue, Task)
    assert [(t.request_id, g.name) for t, g, _ in started] == [("b", "prefill"), ("c", "encode")]


def test_failed_request_still_reaches_the_prefill_ranks():
    """Once the encoders took a task, the prefill ranks must take it too (their receives match the
    encoders' sends in order), even if the request failed meanwhile; reset() clears everything."""
    groups = ModelGroups.from_workers(_workers(3), num_encoders=1)
    queue = collections.deque(["a", "b"])
    groups.next_tasks(queue, Task)
    _finish(groups, groups.encode, "a")
    groups.next_tasks(queue, Task)  # b on the encoders, waiting for the prefill ranks
    _finish(groups, groups.prefill, "a")
    started = groups.next_tasks(queue, Task)
    assert [(t.request_id, g.name) for t, g, _ in started] == [("b", "prefill")]
    assert {g.request_id for g in groups.busy_groups()} == {"b"}
    groups.reset()
    assert groups.busy_groups() == [] and not groups.encoded
