"""The scheduler's model-group hand-out (pure): colocated runs one request at a time; disaggregated
encoders take a batch of the ready requests (one by default) while the prefill ranks run the previous
ones, at most one batch ahead, and the prefill ranks take every encoded task in sequence order."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import pytest

from spava.config import load_config
from spava.runtime.launch import WorkerSpec
from spava.runtime.model_groups import EncodeBatchLimits, ModelGroups, num_patches
from spava.runtime.policy import max_prepared_requests
from spava.runtime.state import WorkerState


@dataclass
class Task:
    request_id: str
    seq: int


def _workers(num):
    return [WorkerState(WorkerSpec(f"model{r}", "model", r), phase="ready") for r in range(num)]


def _finish(groups, group, request_id):
    for worker in group.workers:
        groups.release(worker.spec.worker_id, request_id)


def _shown(started):
    """Handouts as (request ids, group name, is_new)."""
    return [([t.request_id for t in h.tasks], h.group.name, h.is_new) for h in started]


def test_colocated_runs_one_request_at_a_time():
    groups = ModelGroups.from_workers(_workers(2), num_encoders=0, limits=EncodeBatchLimits(max_requests=4))
    queue = collections.deque(["a", "b"])
    started = groups.next_tasks(queue, Task)
    assert _shown(started) == [(["a"], "model", True)] and started[0].tasks[0].seq == 1
    assert groups.next_tasks(queue, Task) == []
    _finish(groups, groups.prefill, "a")
    assert [(t.request_id, t.seq) for h in groups.next_tasks(queue, Task) for t in h.tasks] == [("b", 2)]


def test_disaggregated_encoders_run_one_ahead():
    groups = ModelGroups.from_workers(_workers(3), num_encoders=1)
    assert [w.spec.rank for w in groups.encode.workers] == [0]
    queue = collections.deque(["a", "b", "c"])
    started = groups.next_tasks(queue, Task)  # a to the encoders, then at once to the prefill ranks
    assert _shown(started) == [(["a"], "encode", True), (["a"], "prefill", False)]
    _finish(groups, groups.encode, "a")
    started = groups.next_tasks(queue, Task)  # b encodes while a is still in prefill
    assert _shown(started) == [(["b"], "encode", True)] and started[0].tasks[0].seq == 2
    _finish(groups, groups.encode, "b")
    assert groups.next_tasks(queue, Task) == []  # c waits: b's embeddings wait for the prefill ranks
    _finish(groups, groups.prefill, "a")
    assert _shown(groups.next_tasks(queue, Task)) == [(["b"], "prefill", False), (["c"], "encode", True)]


def test_failed_request_still_reaches_the_prefill_ranks():
    """Once the encoders took a task, the prefill ranks must take it too (their receives match the
    encoders' sends in order), even if the request failed meanwhile; reset() clears everything."""
    groups = ModelGroups.from_workers(_workers(3), num_encoders=1)
    queue = collections.deque(["a", "b"])
    groups.next_tasks(queue, Task)
    _finish(groups, groups.encode, "a")
    groups.next_tasks(queue, Task)  # b on the encoders, waiting for the prefill ranks
    _finish(groups, groups.prefill, "a")
    assert _shown(groups.next_tasks(queue, Task)) == [(["b"], "prefill", False)]
    assert {g.request_id for g in groups.busy_groups()} == {"b"}
    groups.reset()
    assert groups.busy_groups() == [] and not groups.encoded


@pytest.mark.parametrize("patches, limits, expected", [
    ([], EncodeBatchLimits(4, 100), 0),
    ([10, 10, 10, 10, 10], EncodeBatchLimits(4, 100), 4),  # the count limit
    ([10, 10, 10], EncodeBatchLimits(1, 100), 1),  # 1 = one request at a time
    ([40, 50, 20, 1], EncodeBatchLimits(4, 100), 2),  # the patch budget: 40 + 50 + 20 > 100
    ([40, 60, 1], EncodeBatchLimits(4, 100), 2),  # exactly the budget fits
    ([500, 1, 1], EncodeBatchLimits(4, 100), 1),  # an oversize request is taken, alone
    ([50, 500, 1], EncodeBatchLimits(4, 100), 1),  # stops at the first that does not fit: order kept
    ([0, 0, 100, 0], EncodeBatchLimits(4, 100), 4),  # text-only requests have no patches
])
def test_batch_size_follows_the_count_limit_and_the_patch_budget(patches, limits, expected):
    assert limits.take(patches) == expected


def test_num_patches_of_a_layout():
    assert num_patches([[2, 10, 14], [1, 8, 8]]) == 2 * 10 * 14 + 64
    assert num_patches([]) == 0  # text only


def test_encoders_batch_the_ready_requests_and_stay_busy_until_every_one_is_reported():
    groups = ModelGroups.from_workers(_workers(4), num_encoders=2, limits=EncodeBatchLimits(3, 1000))
    patches = {"a": 300, "b": 300, "c": 300, "d": 300, "e": 900, "f": 50}
    queue = collections.deque("abcdef")
    started = groups.next_tasks(queue, Task, patches.get)
    assert _shown(started) == [(["a", "b", "c"], "encode", True), (["a"], "prefill", False)]
    assert [t.seq for t in started[0].tasks] == [1, 2, 3] and list(queue) == ["d", "e", "f"]
    assert [w.request_id for w in groups.encode.workers] == ["a", "a"]
    for request_id in "abc":  # encoder 0 is done with the whole batch, encoder 1 not yet with c
        groups.release("model0", request_id)
    for request_id in "ab":
        groups.release("model1", request_id)
    assert groups.encode.request_ids == ("a", "b", "c") and not groups.encode.is_idle
    assert [w.request_id for w in groups.encode.workers] == [None, "c"]
    assert groups.next_tasks(queue, Task, patches.get) == []
    groups.release("model1", "c")
    assert groups.encode.is_idle
    # idle, but b and c still wait for the prefill ranks: no new batch until the prefill ranks took c
    assert groups.next_tasks(queue, Task, patches.get) == []
    _finish(groups, groups.prefill, "a")
    assert _shown(groups.next_tasks(queue, Task, patches.get)) == [(["b"], "prefill", False)]
    _finish(groups, groups.prefill, "b")
    started = groups.next_tasks(queue, Task, patches.get)  # c to the prefill ranks frees the encoders
    assert _shown(started) == [(["c"], "prefill", False), (["d"], "encode", True)]  # d + e > 1000 patches


def test_an_oversize_request_is_encoded_alone_and_later_ones_batch_again():
    groups = ModelGroups.from_workers(_workers(3), num_encoders=1, limits=EncodeBatchLimits(4, 100))
    patches = {"big": 5000, "s1": 30, "s2": 30, "s3": 30, "s4": 30}
    queue = collections.deque(["big", "s1", "s2", "s3", "s4"])
    assert _shown(groups.next_tasks(queue, Task, patches.get))[0] == (["big"], "encode", True)
    _finish(groups, groups.encode, "big")
    started = groups.next_tasks(queue, Task, patches.get)
    assert _shown(started) == [(["s1", "s2", "s3"], "encode", True)] and list(queue) == ["s4"]


def test_every_encoded_task_reaches_the_prefill_ranks_in_seq_order_even_if_it_failed():
    """Requests of a batch that failed (the encoders reported an error for them) still go to the
    prefill ranks, one by one in seq order: the encoders' sends for them must be received."""
    groups = ModelGroups.from_workers(_workers(3), num_encoders=1, limits=EncodeBatchLimits(4, 10**6))
    queue = collections.deque(["a", "b", "c", "d"])
    handed = []
    for handout in groups.next_tasks(queue, Task):
        handed += [t for t in handout.tasks if handout.group is groups.prefill]
    for request_id in "abcd":  # the encoders answer every request (b and c: an error, same release)
        groups.release("model0", request_id)
    while len(handed) < 4:
        _finish(groups, groups.prefill, handed[-1].request_id)
        for handout in groups.next_tasks(queue, Task):
            assert handout.group is groups.prefill and len(handout.tasks) == 1
            handed += list(handout.tasks)
    assert [(t.request_id, t.seq) for t in handed] == [("a", 1), ("b", 2), ("c", 3), ("d", 4)]


def test_holds_a_request_until_every_rank_it_was_given_to_reported_it():
    groups = ModelGroups.from_workers(_workers(3), num_encoders=1, limits=EncodeBatchLimits(2, 10**6))
    queue = collections.deque(["a", "b"])
    groups.next_tasks(queue, Task)  # a, b on the encoder, a on the prefill ranks
    _finish(groups, groups.encode, "b")
    assert groups.holds("b")  # the prefill ranks still get it (it waits in `encoded`)
    _finish(groups, groups.encode, "a")
    groups.release("model1", "a")
    assert groups.holds("a")  # prefill rank model2 has not reported it yet
    groups.release("model2", "a")
    assert not groups.holds("a") and not groups.holds("x")
    groups.next_tasks(queue, Task)
    _finish(groups, groups.prefill, "b")
    assert not groups.holds("b") and groups.busy_groups() == []


def test_reset_clears_a_batch_in_flight():
    groups = ModelGroups.from_workers(_workers(3), num_encoders=1, limits=EncodeBatchLimits(4, 10**6))
    queue = collections.deque(["a", "b", "c"])
    groups.next_tasks(queue, Task)
    groups.release("model0", "a")
    groups.reset()
    assert groups.busy_groups() == [] and not groups.encoded and not groups.holds("b")
    assert all(w.request_id is None for w in groups.encode.workers + groups.prefill.workers)
    groups.release("model0", "b")  # a late report from before the restart is ignored
    queue.append("d")
    assert _shown(groups.next_tasks(queue, Task)) == [(["d"], "encode", True), (["d"], "prefill", False)]
    assert groups.encode.request_ids == ("d",)


def test_prepared_requests_allow_a_full_encoder_batch_when_disaggregated():
    disaggregated = load_config(None, ["encode.devices=[cpu]", "encode.max_batch_requests=6"])
    assert max_prepared_requests(disaggregated) == 6
    assert max_prepared_requests(load_config(None, ["encode.max_batch_requests=1"])) == 2
    colocated = load_config(None, ["encode.devices=[]", "encode.max_batch_requests=6"])
    assert max_prepared_requests(colocated) == 2
