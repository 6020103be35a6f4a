"""Liveness of workers, their restarts and the pipeline's health; deadlines of requests. Checked by
the scheduler on every loop turn (scheduler thread).

A worker is dead when its process exited, or when it is ready and sent no heartbeat for
`runtime.heartbeat_timeout_s` (hung, or stopped with SIGSTOP: the scheduler kills it), or when a
restart did not become ready within `runtime.startup_timeout_s`. Its request fails (kind
"worker_died") and it is restarted (the model ranks as a group), at most
`runtime.max_worker_restarts` times within `runtime.restart_window_s` (`RestartBudget`). Past that
it stays down until the window lets it restart again, and the pipeline is unhealthy meanwhile if a
role has no live worker left (or the model group is down): requests are refused with kind
"unhealthy", and the status says why and for how long. Model ranks on another node cannot be
restarted from here: their loss leaves the pipeline unhealthy.
"""

from __future__ import annotations

import logging
import signal
import time

from spava.comm.messages import CancelReq, HeartbeatReq, ReadyReq

logger = logging.getLogger("spava.scheduler")
# where a request stands, in order: a role being down fails the requests that still need it
STAGE_ORDER = ("video_queue", "video", "layout_queue", "layout", "decoded_wait", "model_queue", "model")
ROLE_LAST_STAGE = {"video": "video", "layout": "decoded_wait", "model": "model"}


def check_startup(scheduler, started: float) -> None:
    """Until every worker is ready: a worker that exits, or a start past `runtime.startup_timeout_s`,
    is the pipeline's startup error."""
    dead = [w for w in scheduler.workers.values() if scheduler.launcher.exit_code(w.spec.worker_id) is not None]
    if dead:
        scheduler.startup_error = f"worker {dead[0].spec.worker_id} exited during startup (see its log above)"
    elif time.monotonic() - started > scheduler.runtime.startup_timeout_s:
        scheduler.startup_error = (f"workers not ready after runtime.startup_timeout_s="
                                   f"{scheduler.runtime.startup_timeout_s}")
    if scheduler.startup_error or all(w.is_ready for w in scheduler.workers.values()):
        scheduler.ready.set()


def on_ready(scheduler, identity: bytes, message: ReadyReq) -> None:
    state = scheduler.workers.get(message.worker_id)
    if state is None or identity != message.worker_id.encode():
        logger.error("rejected a worker that is not part of this pipeline: %r", message.worker_id)
        return
    expected_pid = scheduler.launcher.pid(message.worker_id)
    if state.phase == "dead" or (expected_pid is not None and message.pid != expected_pid):
        return  # from a process killed meanwhile: its message was still on the way
    state.enter("ready")
    state.device, state.host, state.last_seen = message.device, message.host, time.monotonic()
    logger.info("worker %s ready on %s (pid %d, %s)", message.worker_id, message.host, message.pid, message.device)


def on_heartbeat(scheduler, identity: bytes, message: HeartbeatReq) -> None:
    state = scheduler.workers.get(message.worker_id)
    if state is not None:
        state.last_seen = time.monotonic()


def forgive_silence(scheduler, now: float) -> None:
    """The scheduler thread did not run for a while (its process was stopped or starved): the
    workers' silence over that time says nothing about them, so it counts from now."""
    logger.info("the scheduler was paused; worker heartbeats are timed from now")
    for state in scheduler.workers.values():
        state.last_seen = max(state.last_seen, now - scheduler.runtime.heartbeat_interval_s)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _worker_problem(scheduler, state, now: float) -> str | None:
    code = scheduler.launcher.exit_code(state.spec.worker_id)
    if code is not None:
        return _exit_text(code)
    runtime = scheduler.runtime
    silent = now - state.last_seen
    if state.is_ready and silent > runtime.heartbeat_timeout_s:
        return f"sent no heartbeat for {silent:.1f} s (hung or stopped; runtime.heartbeat_timeout_s)"
    if state.phase == "restarting" and now - state.since > runtime.startup_timeout_s:
        return f"was not ready {now - state.since:.0f} s after its restart (runtime.startup_timeout_s)"
    return None


def check_workers(scheduler) -> None:
    """Handle dead workers, then bring back the ones whose restart budget allows it again."""
    now = time.monotonic()
    was_healthy = scheduler.is_healthy
    for state in list(scheduler.workers.values()):
        if state.phase == "dead":
            continue
        problem = _worker_problem(scheduler, state, now)
        if problem is None:
            continue
        logger.error("worker %s (%s) %s", state.spec.worker_id, state.spec.role, problem)
        state.problem = problem
        if state.spec.role == "model":
            _on_model_rank_died(scheduler, state, problem, now)
            break
        _on_cpu_worker_died(scheduler, state, problem, now)
    _revive(scheduler, now)
    if was_healthy and not scheduler.is_healthy:
        _on_unhealthy(scheduler)


def _fail_current(scheduler, state, stage: str, problem: str) -> None:
    request = scheduler.requests.get(state.request_id) if state.request_id else None
    if request is not None:
        scheduler._fail(request, stage, "worker_died",
                        f"worker {state.spec.worker_id} ({stage}) {problem} while processing this request")


def _on_cpu_worker_died(scheduler, state, problem: str, now: float) -> None:
    request_id = state.request_id
    _fail_current(scheduler, state, state.spec.role, problem)
    scheduler.launcher.kill(state.spec.worker_id)
    scheduler.sweep_request_files(request_id)  # what it wrote before dying, even for a request that had ended
    state.enter("dead", now)
    _restart_cpu_worker(scheduler, state, now)


def _restart_cpu_worker(scheduler, state, now: float) -> None:
    budget = scheduler.restart_budgets[state.spec.worker_id]
    if not budget.can_restart(now):
        logger.error("worker %s stays down for %.0f s: restarted %d times within runtime.restart_window_s=%g",
                     state.spec.worker_id, budget.seconds_until_restart(now), budget.num_recent, budget.window_s)
        return
    budget.record(now)
    scheduler.launcher.start(state.spec)
    state.enter("restarting", now)


def _on_model_rank_died(scheduler, state, problem: str, now: float) -> None:
    host = state.host or "?"
    _fail_current(scheduler, state, "model", f"on host {host} {problem}")
    for request in list(scheduler.requests.values()):  # disaggregated: a second request may be in flight
        if request.stage == "model":
            scheduler._fail(request, "model", "worker_died",
                            f"model rank {state.spec.worker_id} on host {host} {problem}")
    if not scheduler.can_restart_model_group():  # ranks on other nodes: their node is gone or cut off
        lost = sorted({host} | {w.host or "?" for w in scheduler._model_workers()
                                if w.phase != "dead" and _worker_problem(scheduler, w, now)})
        for worker in scheduler._model_workers():
            worker.enter("dead", now)
        scheduler.lost_detail = f"lost host {', '.join(lost)} (model ranks there stopped answering)"
        return
    restart_model_group(scheduler, now)


def restart_model_group(scheduler, now: float) -> bool:
    """Kill every model rank and start a fresh group if the restart budget allows; else leave the
    ranks down (dead) until it does. Returns whether it restarted."""
    for worker in scheduler._model_workers():
        scheduler.launcher.kill(worker.spec.worker_id)
        worker.enter("dead", now)
    scheduler.model_groups.reset()
    scheduler._free_held_refs()
    budget = scheduler.restart_budgets["model"]
    if not budget.can_restart(now):
        logger.error("the model ranks stay down for %.0f s: restarted %d times within runtime.restart_window_s=%g",
                     budget.seconds_until_restart(now), budget.num_recent, budget.window_s)
        return False
    logger.warning("restarting the model group")
    budget.record(now)
    scheduler.start_model_group()
    for worker in scheduler._model_workers():
        worker.enter("restarting", now)
    return True


def _revive(scheduler, now: float) -> None:
    """Restart dead workers whose budget allows it again (not those of a lost node)."""
    if scheduler.lost_detail:
        return
    for state in scheduler.workers.values():
        if state.phase == "dead" and state.spec.role != "model":
            _restart_cpu_worker(scheduler, state, now)
    is_group_down = any(w.phase == "dead" for w in scheduler._model_workers())
    if is_group_down and scheduler.restart_budgets["model"].can_restart(now):
        restart_model_group(scheduler, now)


def _down_roles(scheduler) -> list[str]:
    """Roles that serve nothing now: no live video / layout worker, or any model rank down."""
    down = []
    for role in ("video", "layout", "model"):
        phases = [w.phase for w in scheduler.workers.values() if w.spec.role == role]
        if ("dead" in phases) if role == "model" else all(phase == "dead" for phase in phases):
            down.append(role)
    return down


def health(scheduler, now: float | None = None) -> tuple[bool, str]:
    """(is healthy, why not): unhealthy while a role has no live worker, a model rank is down, or a
    node is lost. Starting and restarting workers count as live (requests wait for them)."""
    if scheduler.lost_detail:
        return False, scheduler.lost_detail
    down = _down_roles(scheduler)
    if not down:
        return True, ""
    now = time.monotonic() if now is None else now
    role = down[0]
    workers = [w for w in scheduler.workers.values() if w.spec.role == role]
    budget = scheduler.restart_budgets["model" if role == "model" else workers[0].spec.worker_id]
    problem = next((w.problem for w in workers if w.problem), "died")
    what = "the model ranks are" if role == "model" else f"every {role} worker is"
    return False, (f"{what} down ({problem}), restarted {budget.num_recent} times within "
                   f"runtime.restart_window_s={budget.window_s:g}; next restart in "
                   f"{budget.seconds_until_restart(now):.0f} s")


def _on_unhealthy(scheduler) -> None:
    """Fail the requests that need a role that is down now (they could only wait for the window)."""
    _, reason = health(scheduler)
    logger.error("pipeline unhealthy: %s", reason)
    down = _down_roles(scheduler)
    last = max(STAGE_ORDER.index(ROLE_LAST_STAGE[role]) for role in down) if down else len(STAGE_ORDER) - 1
    for request in list(scheduler.requests.values()):
        if request.stage in STAGE_ORDER and STAGE_ORDER.index(request.stage) <= last:
            scheduler._fail(request, request.stage.removesuffix("_queue"), "unhealthy",
                            f"the pipeline is unhealthy: {reason}")


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
            if scheduler.can_restart_model_group():
                restart_model_group(scheduler, now)
            return
