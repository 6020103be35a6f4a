"""The scheduler: owns the ZMQ ROUTER, admits requests, moves them through the stage queues.

Runs as a thread of the process that created the `Pipeline` (or of a head-node launcher). Workers
connect as DEALERs with their worker id as identity and say `ReadyReq`; clients connect as DEALERs
and send `SubmitReq`. Each request goes video -> layout -> model (encode + prefill + decode on the
model ranks, which take one request at a time, in `seq` order; disaggregated encoder ranks may take
a batch of them, see `model_groups`). A video worker announces the planned frames
(`VideoPlanOutput`) before it decodes them, so the layout and the model ranks start while frames
stream in (on one host; model ranks on other nodes wait for the whole video). Different requests
overlap: while the model ranks run request i, layout runs i+1 and video decoding i+2. The number
of admitted but not yet running requests whose frames are held in memory is bounded
(`runtime.max_prepared_requests`, at least `encode.max_batch_requests` when disaggregated): that is
the back-pressure (`dispatch`). Worker liveness, restarts and health are its `Health`'s, which
reports what they mean for requests; which requests it takes are its `Admission`'s decisions.

Failures stay per request: bad input, a timeout, a cancellation or a dead worker fail that request
with an `ErrorOutput` naming the stage and the kind (`policy.ERROR_KINDS`); dead workers are
restarted (the model group as a whole) at a bounded rate, see `health`.

Shared memory: every file of the pipeline is named with its owner tag (`spava.comm.shm`); a
client's payload file is adopted (renamed into the pipeline's namespace) when its `SubmitReq`
arrives, so from then on the scheduler frees it whatever happens to the client.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

import zmq

from spava.comm.messages import (
    CancelReq, ErrorOutput, FramesDoneOutput, HeartbeatReq, LayoutTaskOutput, MessageError,
    ModelTaskOutput, ReadyReq, ResultOutput, ShutdownReq, StatusOutput, StatusReq, SubmitReq,
    TaskError, TensorRef, TokenOutput, VideoPlanOutput, VideoTaskOutput, decode_message,
    encode_message,
)
from spava.comm.security import secure_server
from spava.comm.shm import (adopt_shared, current_owner, fail_progress, request_file_key, sweep_request,
                            unlink_shared)
from spava.runtime.dispatch import dispatch
from spava.runtime.health import Health, HealthReport, WorkerLoss
from spava.runtime.launch import worker_specs
from spava.runtime.metrics import Metrics
from spava.runtime.model_groups import EncodeBatchLimits, ModelGroups
from spava.runtime.policy import ERROR_KINDS, Admission, max_prepared_requests
from spava.runtime.state import Request, WorkerState, item_refs

logger = logging.getLogger("spava.scheduler")


class Scheduler:
    """Request lifecycle over the worker pool; see the module docstring."""

    def __init__(self, config, control_address: str, launcher, *, config_hash: str = "", secret: str = "",
                 streams_frames: bool = True, owner: str | None = None):
        """`streams_frames`: model ranks read frames while they decode (all on this host); else a
        request goes to the model ranks only once its video is decoded. `owner`: the pipeline's
        shared-memory owner tag (`spava.comm.shm.owner_tag`), given to adopted client files."""
        self.config, self.runtime = config, config.runtime
        self.launcher, self.config_hash, self.secret = launcher, config_hash, secret
        self.streams_frames = streams_frames
        self.owner = owner or current_owner()
        self.zmq_context = zmq.Context()
        self.socket = self.zmq_context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # a restarted worker reconnects under its old identity, possibly before the dead peer's
        # connection is dropped: hand the identity over to the new connection instead of refusing it
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.authenticator = secure_server(self.zmq_context, self.socket, secret)
        self.socket.bind(control_address)
        self.workers = {spec.worker_id: WorkerState(spec) for spec in worker_specs(config)}
        self.health = Health(self.workers, launcher, config.runtime)
        self.admission = Admission(config.video, config.decode, config.runtime.max_queued_requests, self.health)
        self.requests: dict[str, Request] = {}
        self.queues = {stage: collections.deque() for stage in ("video", "layout", "model")}
        limits = EncodeBatchLimits(config.encode.max_batch_requests, config.encode.max_batch_patches)
        self.model_groups = ModelGroups.from_workers(self.health.model_workers(), len(config.encode.devices), limits)
        self.max_prepared = max_prepared_requests(config)
        # shared memory of ended requests that model ranks may still read (see _forget)
        self.held_refs: dict[str, list[TensorRef]] = {}
        self.ready = threading.Event()
        self.startup_error: str | None = None
        self.metrics = Metrics(config.runtime.metrics_port)

    # ----- lifecycle ----------------------------------------------------------------------------

    def start_workers(self, local_ids: set[str] | None = None) -> None:
        """Start this node's workers (all by default); the others connect from their own nodes."""
        self.health.start_workers(local_ids)

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set or a ShutdownReq arrives."""
        started = last_turn = time.monotonic()
        try:
            while not stop.is_set():
                if self.socket.poll(50):
                    self._receive_all()
                if not self.ready.is_set():
                    self._check_startup(started)
                    continue
                now = time.monotonic()
                if now - last_turn > self.runtime.heartbeat_timeout_s / 2:
                    self.health.forgive_silence(now)
                last_turn = now
                self._check_workers()
                self._check_deadlines()
                for identity, message in dispatch(self):
                    self._send(identity, message)
                self.metrics.update(self.queues, self.health.is_healthy())
        finally:
            self.shutdown()

    def _check_startup(self, started: float) -> None:
        """Until every worker is ready: a worker that exits, or a start past the timeout, is the
        pipeline's startup error."""
        self.startup_error = self.startup_error or self.health.startup_error(started, time.monotonic())
        if self.startup_error or self.health.is_every_worker_ready:
            self.ready.set()

    def _receive_all(self, max_messages: int = 1000) -> None:
        """Every message waiting (up to a bound), so heartbeats that queued up are seen before the
        health check."""
        for _ in range(max_messages):
            if not self.socket.poll(0):
                return
            self._receive()

    def shutdown(self) -> None:
        """Stop the workers, fail what is in flight, free its shared memory, close the socket."""
        for state in self.workers.values():
            self._send(state.spec.worker_id.encode(), ShutdownReq("pipeline closed"))
        self.launcher.stop_all(grace_s=3.0)
        for request in list(self.requests.values()):
            self._fail(request, "scheduler", "unhealthy", "the pipeline was shut down before this request finished")
        self._free_held_refs(is_final=True)
        self.socket.close()
        if self.authenticator is not None:
            self.authenticator.stop()
        self.zmq_context.term()

    # ----- messages -----------------------------------------------------------------------------

    def _send(self, identity: bytes, message) -> None:
        try:
            self.socket.send_multipart([identity, encode_message(message)], zmq.NOBLOCK)
        except zmq.ZMQError as error:  # peer gone (EHOSTUNREACH with ROUTER_MANDATORY), or its queue is full
            level = logging.DEBUG if isinstance(message, ShutdownReq) else logging.WARNING  # gone already: fine
            logger.log(level, "could not send %s to %r: %s", type(message).__name__, identity, error)

    def _receive(self) -> None:
        frames = self.socket.recv_multipart()
        identity, payload = frames[0], frames[-1]
        try:
            message = decode_message(payload)
        except MessageError as error:
            logger.error("malformed message from %r: %s", identity, error)
            self._send(identity, ErrorOutput("", "scheduler", "bad_input", f"malformed message: {error}"))
            return
        handler = self._handlers().get(type(message))
        if handler is None:
            self._send(identity, ErrorOutput("", "scheduler", "bad_input", f"unexpected {type(message).__name__}"))
            return
        handler(identity, message)

    def _handlers(self):
        return {
            SubmitReq: self._on_submit, CancelReq: self._on_cancel, StatusReq: self._on_status,
            ShutdownReq: self._on_shutdown,
            ReadyReq: lambda identity, message: self.health.on_ready(identity, message, time.monotonic()),
            HeartbeatReq: lambda identity, message: self.health.on_heartbeat(message, time.monotonic()),
            VideoPlanOutput: self._on_video_plan, VideoTaskOutput: self._on_video, LayoutTaskOutput: self._on_layout,
            ModelTaskOutput: self._on_model, FramesDoneOutput: self._on_frames_done,
            TokenOutput: self._on_token, TaskError: self._on_task_error,
        }

    def _on_submit(self, identity: bytes, message: SubmitReq) -> None:
        if message.video_ref is not None:
            try:
                message.video_ref = adopt_shared(message.video_ref, self.owner)  # ours to free from now on
            except OSError as error:
                self._send(identity, ErrorOutput(message.request_id, "admission", "bad_input",
                                                 f"the request's {message.media_type} data is gone from shared "
                                                 f"memory ({error.strerror}); submit it again"))
                return
        decision = self.admission.check(message, num_in_flight=len(self.requests),
                                        ids_in_use=self.requests.keys() | self.held_refs.keys())
        if not decision.is_admitted:
            unlink_shared(message.video_ref)  # a refused request's encoded video / frames: nobody else frees them
            self._send(identity, ErrorOutput(message.request_id, "admission", decision.kind, decision.message))
            return
        timeout = message.timeout_s or self.runtime.request_timeout_s
        request = Request(message, identity, time.monotonic() + timeout, decision.options, decision.sampling)
        if message.video_ref is not None:
            request.refs.append(message.video_ref)
        self.requests[message.request_id] = request
        if message.video_kind == "none":
            request.is_video_done = True
            request.enter("layout_queue")
            self.queues["layout"].append(request.request_id)
        else:
            self.queues["video"].append(request.request_id)

    def _on_cancel(self, identity: bytes, message: CancelReq) -> None:
        request = self.requests.get(message.request_id)
        if request is None:
            return
        if request.stage == "model":
            request.is_cancelled = True
            self._broadcast_model(CancelReq(request.request_id))
            return
        self._fail(request, request.stage.removesuffix("_queue"), "cancelled", "cancelled by the client")

    def _on_status(self, identity: bytes, message: StatusReq) -> None:
        workers = {wid: w.status_word() for wid, w in self.workers.items()}
        queued = {stage: len(queue) for stage, queue in self.queues.items()}
        is_healthy, detail = self.health.status()
        self._send(identity, StatusOutput(message.request_id, is_healthy, workers, queued, len(self.requests), detail))

    def _on_shutdown(self, identity: bytes, message: ShutdownReq) -> None:
        raise SystemExit(0)

    def _release(self, worker_id: str) -> None:
        state = self.workers.get(worker_id)
        if state is not None:
            state.request_id = None

    def _on_video_plan(self, identity: bytes, message: VideoPlanOutput) -> None:
        """The frames are planned (files created); they decode from now on. Layout can start."""
        refs = [ref for item in message.items for ref in item_refs(item)]
        request = self.requests.get(message.request_id)
        if request is None:  # ended meanwhile: stop the decode and free its files
            for item in message.items:
                fail_progress(item.progress)
            for ref in refs:
                unlink_shared(ref)
            self._send(identity, CancelReq(message.request_id))
            return
        request.refs.extend(refs)
        request.video, request.video_worker_id = message, identity.decode()
        request.timings["probe_s"] = message.probe_s
        request.enter("layout_queue")
        self.queues["layout"].append(request.request_id)

    def _on_video(self, identity: bytes, message: VideoTaskOutput) -> None:
        """Every frame is decoded (the video worker is free again)."""
        self._release(identity.decode())
        request = self.requests.get(message.request_id)
        if request is None:
            return
        request.video_worker_id = None
        request.is_video_done = True
        request.timings["video_decode_s"] = message.decode_s
        self._free_frames_if_read(request)
        request.warnings.extend(message.warnings)
        if request.video is None:  # nothing was planned (a text-only request)
            request.enter("layout_queue")
            self.queues["layout"].append(request.request_id)
        elif request.stage == "decoded_wait":
            request.enter("model_queue")
            self.queues["model"].append(request.request_id)

    def _on_layout(self, identity: bytes, message: LayoutTaskOutput) -> None:
        self._release(identity.decode())
        refs = [message.input_ids, message.position_ids, message.vision_positions]
        request = self.requests.get(message.request_id)
        if request is None:
            for ref in refs:
                unlink_shared(ref)
            return
        request.refs.extend(refs)
        request.layout = message
        if not request.is_video_done and not self.streams_frames:
            request.enter("decoded_wait")  # model ranks on other nodes read complete files only
            return
        request.enter("model_queue")
        self.queues["model"].append(request.request_id)

    def _on_token(self, identity: bytes, message: TokenOutput) -> None:
        request = self.requests.get(message.request_id)
        if request is not None and request.submit.stream:
            self._send(request.client, message)

    def _on_model(self, identity: bytes, message: ModelTaskOutput) -> None:
        self.model_groups.release(message.worker_id, message.request_id)
        self._free_held_refs()
        request = self.requests.get(message.request_id)
        if request is None:
            return
        request.model_outputs[message.worker_id] = message
        if len(request.model_outputs) == len(self.health.model_workers()):
            self._complete(request)
            return
        request.frames_done.add(message.worker_id)  # an encoder's answer: it sent its rows
        self._free_frames_if_read(request)

    def _on_frames_done(self, identity: bytes, message: FramesDoneOutput) -> None:
        request = self.requests.get(message.request_id)
        if request is not None:
            request.frames_done.add(message.worker_id)
            self._free_frames_if_read(request)

    def _free_frames_if_read(self, request: Request) -> None:
        """Free the request's frames and encoded video once every frame is decoded (the video worker
        writes them until then) and every model worker is done reading them; the layout's files stay
        until the request ends."""
        if request.is_frames_freed or not request.is_video_done or request.video is None:
            return
        if any(w.spec.worker_id not in request.frames_done for w in self.health.model_workers()):
            return
        request.is_frames_freed = True
        frames = {ref.path for item in request.video.items for ref in item_refs(item)}
        if request.submit.video_ref is not None:
            frames.add(request.submit.video_ref.path)
        for ref in [r for r in request.refs if r.path in frames]:
            unlink_shared(ref)
        request.refs = [r for r in request.refs if r.path not in frames]

    def _on_task_error(self, identity: bytes, message: TaskError) -> None:
        if message.stage == "model" and message.kind == "internal":
            # a collective error on one rank is usually a dead peer: report (and restart) that first
            time.sleep(0.2)
            self._check_workers()
        if message.stage == "model":
            self._on_model(identity, ModelTaskOutput(message.request_id, message.worker_id, [], "error", {}, False))
        else:
            self._release(message.worker_id)
        request = self.requests.get(message.request_id)
        if request is None:
            return
        if message.stage == "video":
            request.video_worker_id = None  # it stopped decoding; its frames are marked failed below
        if message.stage == "model" and self.model_groups.holds(request.request_id):
            # other model ranks still run it (the prefill ranks receive an encoder's placeholder rows
            # of a failed batch): let the decode rank stop it after one token
            self._broadcast_model(CancelReq(request.request_id))
        self._fail(request, message.stage, message.kind, message.message)

    # ----- completion ---------------------------------------------------------------------------

    def _complete(self, request: Request) -> None:
        decode = next((o for o in request.model_outputs.values() if o.is_decode_rank), None)
        if decode is None or decode.finish_reason in ("cancelled", "error"):
            self._fail(request, "model", "cancelled" if request.is_cancelled else "internal",
                       "cancelled by the client" if request.is_cancelled else "the model ranks returned no answer")
            return
        request.enter("done")
        timings = dict(request.timings)
        for output in request.model_outputs.values():
            for key, value in output.timings.items():
                timings[key] = max(timings.get(key, 0.0), value)
        timings["layout_compute_s"] = request.layout.seconds
        timings["total_s"] = time.monotonic() - request.created
        layout = request.layout
        result = ResultOutput(
            request.request_id, decode.token_ids, decode.text, decode.finish_reason, timings,
            layout.num_visual_tokens, layout.input_ids.shape[0], request.num_frames,
            decode.method or self.config.prefill.attention.method, self.config.world_size, self.config_hash,
            list(request.warnings),
        )
        self._forget(request)  # free shared memory before the client learns the request ended
        self._send(request.client, result)
        self.metrics.finished("ok", "done", timings)

    def _fail(self, request: Request, stage: str, kind: str, message: str) -> None:
        if request.request_id not in self.requests:
            return
        if kind not in ERROR_KINDS:  # e.g. a user stage's TaskError: the client still gets a known kind
            logger.error("unknown error kind %r from %s, reported as internal", kind, stage)
            kind = "internal"
        logger.info("request %s failed in %s (%s): %s", request.request_id, stage, kind, message)
        for queue in self.queues.values():
            if request.request_id in queue:
                queue.remove(request.request_id)
        self._forget(request)
        self._send(request.client, ErrorOutput(request.request_id, stage, kind, message))
        self.metrics.finished(kind, stage, request.timings)

    def _forget(self, request: Request) -> None:
        """Drop the request and free its shared memory, at once or when no model rank needs it any more.

        A request that ended (failed) while model ranks were given it, or still get it from
        `ModelGroups.encoded`, keeps its layout readable until they report its end: the prefill ranks
        must read it to post the receives that match the encoders' point-to-point sends. Frames that
        still stream in are marked failed first (model ranks waiting for them stop, all alike), and
        the video worker decoding them is told to stop.
        """
        self.requests.pop(request.request_id, None)
        if not request.is_video_done:
            for path in request.progress_paths():
                fail_progress(path)
            if request.video_worker_id is not None:
                self._send(request.video_worker_id.encode(), CancelReq(request.request_id))
        if self.model_groups.holds(request.request_id):
            self.held_refs.setdefault(request.request_id, []).extend(request.refs)
            return
        for ref in request.refs:
            unlink_shared(ref)
        self.sweep_request_files(request.request_id)

    def _free_held_refs(self, is_final: bool = False) -> None:
        """Free the shared memory of ended requests that no model rank holds any more (all when final)."""
        for request_id in [r for r in self.held_refs if is_final or not self.model_groups.holds(r)]:
            for ref in self.held_refs.pop(request_id):
                unlink_shared(ref)
            self.sweep_request_files(request_id)

    def sweep_request_files(self, request_id: str | None) -> None:
        """Remove files of an ended request that nobody announced (a worker wrote them, then died or
        failed before saying so), unless a live request names its files the same."""
        if request_id is None:
            return
        key = request_file_key(request_id)
        if any(request_file_key(r) == key for r in [*self.requests, *self.held_refs]):
            return
        removed = sweep_request(self.runtime.shm_dir, self.owner, request_id)
        if removed:
            logger.warning("removed %d unannounced file(s) of ended request %s", len(removed), request_id)

    # ----- health and deadlines -----------------------------------------------------------------

    def _check_workers(self) -> None:
        """Let `Health` find and restart dead workers, then end the requests that this costs."""
        report: HealthReport = self.health.check(time.monotonic())
        for loss in report.losses:
            self._on_worker_lost(loss)
        if report.is_model_group_killed:
            self._end_model_group()
        for request in list(self.requests.values()):
            if request.stage in report.down_stages:
                self._fail(request, request.stage.removesuffix("_queue"), "unhealthy",
                           f"the pipeline is unhealthy: {report.unhealthy_reason}")

    def _on_worker_lost(self, loss: WorkerLoss) -> None:
        request = self.requests.get(loss.request_id) if loss.request_id else None
        if loss.role != "model":
            if request is not None:
                self._fail(request, loss.role, "worker_died",
                           f"worker {loss.worker_id} ({loss.role}) {loss.problem} while processing this request")
            self.sweep_request_files(loss.request_id)  # what it wrote before dying, even for a request that had ended
            return
        where = f"on host {loss.host or '?'} {loss.problem}"
        if request is not None:
            self._fail(request, "model", "worker_died",
                       f"worker {loss.worker_id} (model) {where} while processing this request")
        for other in list(self.requests.values()):  # disaggregated: a second request may be in flight
            if other.stage == "model":
                self._fail(other, "model", "worker_died", f"model rank {loss.worker_id} {where}")

    def _end_model_group(self) -> None:
        """The model ranks were killed: nothing they held is in use any more."""
        self.model_groups.reset()
        self._free_held_refs()

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for request in list(self.requests.values()):
            if now <= request.deadline:
                continue
            if request.stage == "model":
                self._broadcast_model(CancelReq(request.request_id))
            self._fail(request, request.stage.removesuffix("_queue"), "timeout",
                       f"timed out after {now - request.created:.1f} s (timeout_s / runtime.request_timeout_s)")
        for group in self.model_groups.busy_groups():
            is_dead = not any(r in self.requests for r in group.request_ids)  # every request of its batch failed
            if is_dead and now - group.since > self.runtime.request_timeout_s + 30.0:
                logger.error("%s ranks still busy with failed request(s) %s; restarting the model ranks",
                             group.name, ", ".join(group.request_ids))
                if self.health.can_restart_model_group():
                    self.health.restart_model_group(now)
                    self._end_model_group()
                return

    def _broadcast_model(self, message) -> None:
        for state in self.health.model_workers():
            self._send(state.spec.worker_id.encode(), message)
