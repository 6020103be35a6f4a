"""Liveness of workers and deadlines of requests, checked by the scheduler on every loop turn."""

from __future__ import annotations

import logging
import time

from spava.comm.messages import CancelReq

logger = logging.getLogger("spava.scheduler")


def _worker_problem(scheduler, state) -> str | None:
    code = scheduler.launcher.exit_code(state.spec.worker_id)
    if code is not None:
        return f"exited with code {code}"
    silent = time.monotonic() - state.last_seen
    if state.is_ready and silent > scheduler.runtime.heartbeat_timeout_s:
        return f"sent no heartbeat for {silent:.1f} s"
    return None


def check_workers(scheduler) -> None:
    for state in list(scheduler.workers.values()):
        problem = _worker_problem(scheduler, state)
        if problem is None:
            continue
        logger.error("worker %s (%s) %s", state.spec.worker_id, state.spec.role, problem)
        if state.spec.role == "model":
            _on_model_rank_died(scheduler, state, problem)
            return
        _on_cpu_worker_died(scheduler, state, problem)


def _fail_current(scheduler, state, stage: str, problem: str) -> None:
    request = scheduler.requests.get(state.request_id) if state.request_id else None
    if request is not None:
        scheduler._fail(request, stage, "worker_died",
                        f"worker {state.spec.worker_id} ({stage}) {problem} while processing this request")


def _on_cpu_worker_died(scheduler, state, problem: str) -> None:
    _fail_current(scheduler, state, state.spec.role, problem)
    state.request_id, state.is_ready = None, False
    scheduler.launcher.kill(state.spec.worker_id)
    if state.num_restarts < scheduler.runtime.max_worker_restarts:
        state.num_restarts += 1
        state.last_seen = time.monotonic()
        scheduler.launcher.start(state.spec)
        return
    peers = [w for w in scheduler.workers.values() if w.spec.role == state.spec.role and w is not state]
    if not any(scheduler.launcher.exit_code(w.spec.worker_id) is None for w in peers):
        _mark_unhealthy(scheduler, state.spec.role, f"all {state.spec.role} workers died")


def _on_model_rank_died(scheduler, state, problem: str) -> None:
    _fail_current(scheduler, state, "model", f"on host {state.host or '?'} {problem}")
    for request in list(scheduler.requests.values()):  # disaggregated: a second request may be in flight
        if request.stage == "model":
            scheduler._fail(request, "model", "worker_died",
                            f"model rank {state.spec.worker_id} on host {state.host or '?'} {problem}")
    if not scheduler.can_restart_model_group():  # ranks on other nodes: their node is gone or cut off
        lost = sorted({state.host or "?"} | {w.host or "?" for w in scheduler._model_workers()
                                              if _worker_problem(scheduler, w)})
        for worker in scheduler._model_workers():
            worker.is_ready = False
        _mark_unhealthy(scheduler, "model", f"lost host {', '.join(lost)} (model ranks there stopped answering)")
        return
    if state.num_restarts < scheduler.runtime.max_worker_restarts:
        logger.warning("restarting the model group")
        scheduler.restart_model_group()
        for worker in scheduler._model_workers():
            worker.last_seen = time.monotonic()
        return
    for worker in scheduler._model_workers():
        scheduler.launcher.kill(worker.spec.worker_id)
        worker.is_ready = False
    _mark_unhealthy(scheduler, "model", "model ranks kept dying")


def _mark_unhealthy(scheduler, stage: str, reason: str) -> None:
    scheduler.is_healthy = False
    scheduler.health_detail = reason
    logger.error("pipeline unhealthy: %s", reason)
    for request in list(scheduler.requests.values()):
        if request.stage != "done":
            scheduler._fail(request, stage, "worker_died", f"the pipeline is unhealthy: {reason}")


def check_deadlines(scheduler) -> None:
    now = time.monotonic()
    for request in list(scheduler.requests.values()):
        if now <= request.deadline:
            continue
        stage = request.stage.removesuffix("_queue")
        if request.stage == "model":
            scheduler._broadcast_model(CancelReq(request.request_id))
        scheduler._fail(request, stage, "timeout",
                        f"timed out after {now - request.created:.1f} s (timeout_s / runtime.request_timeout_s)")
    for group in scheduler.model_groups.busy_groups():
        is_dead = not any(r in scheduler.requests for r in group.request_ids)  # every request of its batch failed
        if is_dead and now - group.since > scheduler.runtime.request_timeout_s + 30.0:
            logger.error("%s ranks still busy with failed request(s) %s; restarting the model ranks",
                         group.name, ", ".join(group.request_ids))
            scheduler.restart_model_group()
            return
