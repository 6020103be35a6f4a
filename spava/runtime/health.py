"""Liveness of workers, their restarts and the pipeline's health: `Health`, owned by the scheduler
and checked on every loop turn (scheduler thread).

A worker is dead when its process exited, or when it is ready and sent no heartbeat for
`runtime.heartbeat_timeout_s` (hung, or stopped with SIGSTOP: it is killed), or when a restart did
not become ready within `runtime.startup_timeout_s`. It is restarted (the model ranks as a group), at
most `runtime.max_worker_restarts` times within `runtime.restart_window_s` (`RestartBudget`). Past
that it stays down until the window lets it restart again, and the pipeline is unhealthy meanwhile if
a role has no live worker left (or the model group is down); the status says why and for how long.
Model ranks on another node cannot be restarted from here: their loss leaves the pipeline unhealthy.

`Health` starts, kills and restarts worker processes through the launcher and keeps the workers'
phases; what that means for requests it returns as a `HealthReport` (which workers were lost, with
the request each was running; whether the model group was killed; which request stages a newly
unhealthy pipeline can no longer serve), and the scheduler fails those requests.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass, field

from spava.comm.messages import HeartbeatReq, ReadyReq
from spava.runtime.launch import free_port
from spava.runtime.policy import RestartBudget
from spava.runtime.state import WorkerState

logger = logging.getLogger("spava.scheduler")
# where a request stands, in order: a role being down fails the requests that still need it
STAGE_ORDER = ("video_queue", "video", "layout_queue", "layout", "decoded_wait", "model_queue", "model")
ROLE_LAST_STAGE = {"video": "video", "layout": "decoded_wait", "model": "model"}


@dataclass(frozen=True)
class WorkerLoss:
    """One worker found dead: its request (if it ran one) fails with kind "worker_died"."""

    worker_id: str
    role: str
    request_id: str | None  # the request it was running
    problem: str  # what happened to it, e.g. "was killed by SIGKILL"
    host: str = ""


@dataclass
class HealthReport:
    """What one health check found, for the scheduler to apply to the requests.

    losses: the workers found dead. is_model_group_killed: every model rank was killed (and maybe
    started again): requests they ran or hold must end and the model groups start afresh.
    unhealthy_reason / down_stages: set when the pipeline just became unhealthy: requests in those
    stages need a role that is down and could only wait for the restart window.
    """

    losses: list[WorkerLoss] = field(default_factory=list)
    is_model_group_killed: bool = False
    unhealthy_reason: str = ""
    down_stages: tuple[str, ...] = ()


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class Health:
    """Worker liveness, restarts and the pipeline's health (see the module docstring).

    `workers`: the scheduler's worker states (this object updates their phases); `launcher`: starts,
    kills and watches the worker processes; `runtime`: the runtime config section.
    """

    def __init__(self, workers: dict[str, WorkerState], launcher, runtime):
        self.workers, self.launcher, self.runtime = workers, launcher, runtime
        keys = [w for w in workers if not w.startswith("model-")] + ["model"]
        self.restart_budgets = {key: RestartBudget(runtime.max_worker_restarts, runtime.restart_window_s)
                                for key in keys}
        self.lost_detail = ""  # set when model ranks of another node are lost (they cannot be restarted here)

    # ----- starting -----------------------------------------------------------------------------

    def model_workers(self) -> list[WorkerState]:
        return [w for w in self.workers.values() if w.spec.role == "model"]

    def start_workers(self, local_ids: set[str] | None = None) -> None:
        """Start this node's workers (all by default); the others connect from their own nodes."""
        port = self.runtime.dist_port or free_port(self.runtime.dist_address)
        for state in self.workers.values():
            if local_ids is None or state.spec.worker_id in local_ids:
                self.launcher.start(state.spec, dist_port=port)

    def start_model_group(self) -> None:
        """Start every model rank again, with a fresh rendezvous port."""
        port = free_port(self.runtime.dist_address)
        for state in self.model_workers():
            self.launcher.start(state.spec, dist_port=port)

    def startup_error(self, started: float, now: float) -> str | None:
        """Why the pipeline failed to start (a worker exited, or the start ran past
        `runtime.startup_timeout_s`), or None."""
        dead = [w for w in self.workers.values() if self.launcher.exit_code(w.spec.worker_id) is not None]
        if dead:
            return f"worker {dead[0].spec.worker_id} exited during startup (see its log above)"
        if now - started > self.runtime.startup_timeout_s:
            return f"workers not ready after runtime.startup_timeout_s={self.runtime.startup_timeout_s}"
        return None

    @property
    def is_every_worker_ready(self) -> bool:
        return all(w.is_ready for w in self.workers.values())

    # ----- messages from workers ----------------------------------------------------------------

    def on_ready(self, identity: bytes, message: ReadyReq, now: float) -> bool:
        """A worker's handshake; False (and ignored) when it is not one of ours or comes from a process
        killed meanwhile."""
        state = self.workers.get(message.worker_id)
        if state is None or identity != message.worker_id.encode():
            logger.error("rejected a worker that is not part of this pipeline: %r", message.worker_id)
            return False
        expected_pid = self.launcher.pid(message.worker_id)
        if state.phase == "dead" or (expected_pid is not None and message.pid != expected_pid):
            return False  # from a process killed meanwhile: its message was still on the way
        state.enter("ready", now)
        state.device, state.host, state.last_seen = message.device, message.host, now
        logger.info("worker %s ready on %s (pid %d, %s)", message.worker_id, message.host, message.pid, message.device)
        return True

    def on_heartbeat(self, message: HeartbeatReq, now: float) -> None:
        state = self.workers.get(message.worker_id)
        if state is not None:
            state.last_seen = now

    def forgive_silence(self, now: float) -> None:
        """The scheduler thread did not run for a while (its process was stopped or starved): the
        workers' silence over that time says nothing about them, so it counts from now."""
        logger.info("the scheduler was paused; worker heartbeats are timed from now")
        for state in self.workers.values():
            state.last_seen = max(state.last_seen, now - self.runtime.heartbeat_interval_s)

    # ----- the check ----------------------------------------------------------------------------

    def check(self, now: float) -> HealthReport:
        """Find dead workers, kill and restart them within their budgets, bring back the ones whose
        budget allows it again; report what that means for requests."""
        report = HealthReport()
        was_healthy = self.status(now)[0]
        for state in list(self.workers.values()):
            if state.phase == "dead":
                continue
            problem = self._problem(state, now)
            if problem is None:
                continue
            logger.error("worker %s (%s) %s", state.spec.worker_id, state.spec.role, problem)
            state.problem = problem
            report.losses.append(WorkerLoss(state.spec.worker_id, state.spec.role, state.request_id, problem,
                                            state.host))
            if state.spec.role == "model":
                self._on_model_rank_died(state, now, report)
                break
            self.launcher.kill(state.spec.worker_id)
            state.enter("dead", now)
            self._restart_cpu_worker(state, now)
        self._revive(now, report)
        is_healthy, reason = self.status(now)
        if was_healthy and not is_healthy:
            logger.error("pipeline unhealthy: %s", reason)
            down = self._down_roles()
            last = max(STAGE_ORDER.index(ROLE_LAST_STAGE[role]) for role in down) if down else len(STAGE_ORDER) - 1
            report.unhealthy_reason, report.down_stages = reason, STAGE_ORDER[:last + 1]
        return report

    def _problem(self, state: WorkerState, now: float) -> str | None:
        code = self.launcher.exit_code(state.spec.worker_id)
        if code is not None:
            return _exit_text(code)
        runtime = self.runtime
        silent = now - state.last_seen
        if state.is_ready and silent > runtime.heartbeat_timeout_s:
            return f"sent no heartbeat for {silent:.1f} s (hung or stopped; runtime.heartbeat_timeout_s)"
        if state.phase == "restarting" and now - state.since > runtime.startup_timeout_s:
            return f"was not ready {now - state.since:.0f} s after its restart (runtime.startup_timeout_s)"
        return None

    def _restart_cpu_worker(self, state: WorkerState, now: float) -> None:
        budget = self.restart_budgets[state.spec.worker_id]
        if not budget.can_restart(now):
            logger.error("worker %s stays down for %.0f s: restarted %d times within runtime.restart_window_s=%g",
                         state.spec.worker_id, budget.seconds_until_restart(now), budget.num_recent, budget.window_s)
            return
        budget.record(now)
        self.launcher.start(state.spec)
        state.enter("restarting", now)

    def _on_model_rank_died(self, state: WorkerState, now: float, report: HealthReport) -> None:
        if not self.can_restart_model_group():  # ranks on other nodes: their node is gone or cut off
            lost = sorted({state.host or "?"} | {w.host or "?" for w in self.model_workers()
                                                 if w.phase != "dead" and self._problem(w, now)})
            for worker in self.model_workers():
                worker.enter("dead", now)
            self.lost_detail = f"lost host {', '.join(lost)} (model ranks there stopped answering)"
            return
        self.restart_model_group(now)
        report.is_model_group_killed = True

    def restart_model_group(self, now: float) -> bool:
        """Kill every model rank and start a fresh group if the restart budget allows; else leave the
        ranks down (dead) until it does. Returns whether it restarted. The caller ends what the model
        groups held (their ranks are gone)."""
        for worker in self.model_workers():
            self.launcher.kill(worker.spec.worker_id)
            worker.enter("dead", now)
        budget = self.restart_budgets["model"]
        if not budget.can_restart(now):
            logger.error("the model ranks stay down for %.0f s: restarted %d times within runtime.restart_window_s=%g",
                         budget.seconds_until_restart(now), budget.num_recent, budget.window_s)
            return False
        logger.warning("restarting the model group")
        budget.record(now)
        self.start_model_group()
        for worker in self.model_workers():
            worker.enter("restarting", now)
        return True

    def _revive(self, now: float, report: HealthReport) -> None:
        """Restart dead workers whose budget allows it again (not those of a lost node)."""
        if self.lost_detail:
            return
        for state in self.workers.values():
            if state.phase == "dead" and state.spec.role != "model":
                self._restart_cpu_worker(state, now)
        is_group_down = any(w.phase == "dead" for w in self.model_workers())
        if is_group_down and self.restart_budgets["model"].can_restart(now):
            self.restart_model_group(now)
            report.is_model_group_killed = True

    def can_restart_model_group(self) -> bool:
        """Whether every model rank runs here (the launcher can restart them) and no node is lost."""
        return not self.lost_detail and all(self.launcher.is_local(w.spec.worker_id) or w.phase == "dead"
                                            for w in self.model_workers())

    # ----- health -------------------------------------------------------------------------------

    def _down_roles(self) -> list[str]:
        """Roles that serve nothing now: no live video / layout worker, or any model rank down."""
        down = []
        for role in ("video", "layout", "model"):
            phases = [w.phase for w in self.workers.values() if w.spec.role == role]
            if ("dead" in phases) if role == "model" else all(phase == "dead" for phase in phases):
                down.append(role)
        return down

    def status(self, now: float | None = None) -> tuple[bool, str]:
        """(is healthy, why not): unhealthy while a role has no live worker, a model rank is down, or a
        node is lost. Starting and restarting workers count as live (requests wait for them)."""
        if self.lost_detail:
            return False, self.lost_detail
        down = self._down_roles()
        if not down:
            return True, ""
        now = time.monotonic() if now is None else now
        role = down[0]
        workers = [w for w in self.workers.values() if w.spec.role == role]
        budget = self.restart_budgets["model" if role == "model" else workers[0].spec.worker_id]
        problem = next((w.problem for w in workers if w.problem), "died")
        what = "the model ranks are" if role == "model" else f"every {role} worker is"
        if budget.max_restarts == 0:
            return False, f"{what} down ({problem}) and runtime.max_worker_restarts=0 restarts nothing"
        return False, (f"{what} down ({problem}), restarted {budget.num_recent} times within "
                       f"runtime.restart_window_s={budget.window_s:g}; next restart in "
                       f"{budget.seconds_until_restart(now):.0f} s")

    def is_healthy(self) -> bool:
        return self.status()[0]
