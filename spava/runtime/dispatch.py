"""Handing queued requests to idle workers (scheduler thread, every loop turn).

Video and layout tasks go to idle workers of their role, video only while fewer than
`max_prepared` admitted requests hold frames the model stage has not taken yet (the
back-pressure); model tasks go to the model groups in sequence order (`model_groups`). It marks
the assignments in the scheduler's bookkeeping and returns the messages to send; the scheduler
sends them.
"""

from __future__ import annotations

from typing import Any

from spava.comm.messages import EncodeBatchReq, LayoutTaskReq, ModelTaskReq, VideoTaskReq
from spava.runtime.model_groups import Handout, num_patches
from spava.runtime.state import Request, WorkerState


def num_prepared(scheduler) -> int:
    """Admitted requests holding frames/pixels that the model stage has not taken yet."""
    in_flight = sum(1 for r in scheduler.requests.values() if r.stage in ("video", "layout", "decoded_wait"))
    return in_flight + len(scheduler.queues["layout"]) + len(scheduler.queues["model"])


def _idle(scheduler, role: str) -> list[WorkerState]:
    return [w for w in scheduler.workers.values() if w.spec.role == role and w.is_idle]


def dispatch(scheduler) -> list[tuple[bytes, Any]]:
    """Assign what can start now; returns (worker identity, task message) pairs to send."""
    sends: list[tuple[bytes, Any]] = []
    queues = scheduler.queues
    for state in _idle(scheduler, "video"):
        if not queues["video"] or num_prepared(scheduler) >= scheduler.max_prepared:
            break
        request = scheduler.requests[queues["video"].popleft()]
        submit = request.submit
        sends += _assign(state, request, "video", VideoTaskReq(
            request.request_id, submit.video_kind, submit.video_path, submit.video_ref, request.options,
            submit.media_type))
    for state in _idle(scheduler, "layout"):
        if not queues["layout"]:
            break
        request = scheduler.requests[queues["layout"].popleft()]
        items = list(request.video.items) if request.video is not None else []
        sends += _assign(state, request, "layout", LayoutTaskReq(
            request.request_id, request.submit.prompt, items, request.options, request.submit.document))

    def model_task(request_id: str, seq: int) -> ModelTaskReq:
        request = scheduler.requests[request_id]
        return ModelTaskReq(request_id, seq, request.layout, request.sampling)

    def patches_of(request_id: str) -> int:
        return num_patches(scheduler.requests[request_id].layout.grid_thw)

    for handout in scheduler.model_groups.next_tasks(queues["model"], model_task, patches_of):
        sends += _model_work(scheduler, handout)
    return sends


def _model_work(scheduler, handout: Handout) -> list[tuple[bytes, Any]]:
    """One task as its `ModelTaskReq`, an encoder batch of several as one `EncodeBatchReq`."""
    if handout.is_new:
        for task in handout.tasks:
            scheduler.requests[task.request_id].enter("model")
    message = handout.tasks[0] if len(handout.tasks) == 1 else EncodeBatchReq(list(handout.tasks))
    return [(state.spec.worker_id.encode(), message) for state in handout.group.workers]


def _assign(state: WorkerState, request: Request, stage: str, task) -> list[tuple[bytes, Any]]:
    state.request_id = request.request_id
    request.worker_id = state.spec.worker_id
    request.enter(stage)
    return [(state.spec.worker_id.encode(), task)]
