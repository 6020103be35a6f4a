"""One worker process = one stage role: video | layout | model (encode, or prefill + decode).

Started by the launcher as `python -m spava.runtime.worker --role R --rank N ...`. It connects a
ZMQ DEALER to the scheduler's ROUTER, builds its stage(s), sends a `ReadyReq`, then loops:
receive a task -> stage.process -> send the output. A heartbeat thread (own socket) reports
liveness. Bad input fails the task with `TaskError(kind="bad_input")`; any other exception is
logged with its traceback and reported as `kind="internal"`; the worker keeps serving. The process
exits when the scheduler says so, when its parent dies (PR_SET_PDEATHSIG with SIGKILL, which also
ends a worker stopped with SIGSTOP), or on SIGTERM. It holds nothing to clean up: the scheduler owns
the shared memory.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
import traceback

import zmq

from spava.comm.messages import (
    CancelReq, EncodeBatchReq, HeartbeatReq, MessageError, ModelTaskReq, ReadyReq, ShutdownReq, TaskError,
    decode_message, encode_message,
)
from spava.comm.security import resolve_secret, secure_client
from spava.config import load_config
from spava.runtime.launch import PARENT_ENV
from spava.runtime.roles import PeerLostError, build_role
from spava.stages.base import BadInputError, StageContext

# model tasks always run, even cancelled: their point-to-point transfers must be matched on the peers
MODEL_TASKS = (ModelTaskReq, EncodeBatchReq)
MAX_CANCELLED_IDS = 4096  # cancellations remembered for tasks not seen yet (oldest forgotten first)


class RecentIds:
    """A set of request ids that forgets the oldest past `max_size` (cancellations of a worker that
    runs for weeks must not grow without bound)."""

    def __init__(self, max_size: int = MAX_CANCELLED_IDS):
        self.max_size = max_size
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()

    def add(self, request_id: str) -> None:
        self._ids[request_id] = None
        self._ids.move_to_end(request_id)
        while len(self._ids) > self.max_size:
            self._ids.popitem(last=False)

    def discard(self, request_id: str) -> None:
        self._ids.pop(request_id, None)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def task_request_ids(task) -> list[str]:
    """The requests a task message is about: one, or every task of an encoder batch."""
    return [t.request_id for t in task.tasks] if isinstance(task, EncodeBatchReq) else [task.request_id]


class WorkerChannel:
    """The worker's DEALER socket, with a backlog so cancellation checks can peek mid-task."""

    def __init__(self, context: zmq.Context, address: str, worker_id: str, logger: logging.Logger, secret: str = ""):
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, worker_id.encode())
        self.socket.setsockopt(zmq.LINGER, 1000)
        secure_client(self.socket, secret)
        self.socket.connect(address)
        self.logger = logger
        self.backlog: collections.deque = collections.deque()
        self.cancelled = RecentIds()

    def send(self, message) -> None:
        self.socket.send(encode_message(message))

    def _read(self, timeout_ms: int):
        if not self.socket.poll(timeout_ms):
            return None
        data = self.socket.recv()
        try:
            return decode_message(data)
        except MessageError as error:
            self.logger.error("dropped a malformed message from the scheduler: %s", error)
            return None

    def recv(self, timeout_ms: int = 1000):
        """Next message (backlog first), or None after `timeout_ms`."""
        if self.backlog:
            return self.backlog.popleft()
        return self._read(timeout_ms)

    def is_cancelled(self, request_id: str) -> bool:
        """Drain pending messages without blocking; cancellations are recorded, others kept for later."""
        while (message := self._read(0)) is not None:
            if isinstance(message, CancelReq):
                self.cancelled.add(message.request_id)
            else:
                self.backlog.append(message)
        return request_id in self.cancelled


def _heartbeat_loop(context, address, worker_id, interval_s, stop: threading.Event, state: dict, secret: str) -> None:
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.IDENTITY, f"{worker_id}#hb".encode())
    socket.setsockopt(zmq.LINGER, 0)
    secure_client(socket, secret)
    socket.connect(address)
    while not stop.wait(interval_s):
        socket.send(encode_message(HeartbeatReq(worker_id, state.get("request_id"))))
    socket.close()


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent exits (no orphans after a crash, even a
    stopped one), and exit now if the parent is already gone."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass

    expected = int(os.environ.get(PARENT_ENV, "0") or 0)
    if os.getppid() == 1 or (expected and os.getppid() != expected):
        os._exit(0)


class Worker:
    """Runs the stage(s) of one role and answers tasks."""

    def __init__(self, args, config):
        self.args, self.config = args, config
        self.worker_id = args.worker_id
        self.logger = logging.getLogger(f"spava.{args.role}")
        self.zmq_context = zmq.Context()
        self.secret = resolve_secret(config.runtime.secret)
        self.channel = WorkerChannel(self.zmq_context, args.control, self.worker_id, self.logger, self.secret)
        self.state: dict = {}
        self.handlers = {}

    def stage_context(self, device: str, placement=None, group=None) -> StageContext:
        return StageContext(
            worker_id=self.worker_id, rank=self.args.rank, device=device, shm_dir=self.config.runtime.shm_dir,
            logger=self.logger, send=self.channel.send, is_cancelled=self.channel.is_cancelled,
            placement=placement, group=group, is_quiet=self.args.quiet,
        )

    def build(self) -> str:
        """Build and set up the stage(s) of this role; returns the device string."""
        device, self.handlers = build_role(self)
        return device

    def serve(self) -> None:
        stop = threading.Event()
        interval = self.config.runtime.heartbeat_interval_s
        beat = threading.Thread(target=_heartbeat_loop, daemon=True,
                                args=(self.zmq_context, self.args.control, self.worker_id, interval, stop, self.state,
                                      self.secret))
        beat.start()
        device = self.build()
        self.channel.send(ReadyReq(self.worker_id, self.args.role, self.args.rank, os.getpid(), device,
                                   host=os.environ.get("SPAVA_NODE_NAME") or socket.gethostname()))
        self.logger.info("ready on %s", device)
        try:
            self._loop()
        finally:
            stop.set()

    def _loop(self) -> None:
        while True:
            message = self.channel.recv(1000)
            if message is None:
                continue
            if isinstance(message, ShutdownReq):
                self.logger.info("shutting down")
                return
            if isinstance(message, CancelReq):
                self.channel.cancelled.add(message.request_id)
                continue
            handler = self.handlers.get(type(message))
            if handler is None:
                self.logger.error("no handler for %s in role %s", type(message).__name__, self.args.role)
                continue
            self._run(handler, message)

    def _run(self, handler, task) -> None:
        """Run one task message; the handler returns its output message, or sends the outputs itself
        (an encoder batch answers each request as soon as it is done) and returns None. An exception
        fails every request of the message."""
        request_ids = task_request_ids(task)
        if not request_ids:
            return
        if request_ids[0] in self.channel.cancelled and not isinstance(task, MODEL_TASKS):
            self.channel.cancelled.discard(request_ids[0])  # answered, so the scheduler frees this worker
            self.channel.send(TaskError(request_ids[0], self.worker_id, self.args.role, "cancelled",
                                        "cancelled before it started"))
            return
        self.state["request_id"] = request_ids[0]
        try:
            output = handler(task)
            if output is not None:
                self.channel.send(output)
        except BadInputError as error:
            for request_id in request_ids:
                self.channel.send(TaskError(request_id, self.worker_id, self.args.role, "bad_input", str(error)))
        except PeerLostError as error:
            self.logger.error("task %s failed: %s", ", ".join(request_ids), error)
            for request_id in request_ids:
                self.channel.send(TaskError(request_id, self.worker_id, self.args.role, "worker_died", str(error)))
        except Exception as error:  # noqa: BLE001 - a failing task must not kill the worker
            self.logger.error("task %s failed:\n%s", ", ".join(request_ids), traceback.format_exc())
            for request_id in request_ids:
                self.channel.send(TaskError(request_id, self.worker_id, self.args.role, "internal",
                                            f"{type(error).__name__}: {error}"))
        finally:
            self.state["request_id"] = None
            for request_id in request_ids:  # a cancellation is consumed by its task
                self.channel.cancelled.discard(request_id)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="spava stage worker (started by the launcher)")
    parser.add_argument("--role", required=True, choices=["video", "layout", "model"])
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--config", required=True, help="resolved pipeline YAML")
    parser.add_argument("--control", required=True, help="scheduler ZMQ address")
    parser.add_argument("--dist-port", type=int, default=0)
    parser.add_argument("--dist-init", choices=["tcp", "env"], default="tcp",
                        help="model ranks: tcp = meet at runtime.dist_address:--dist-port; env = join the world a "
                             "launcher (torchrun, deepspeed) set up, from RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def configure_logging(config, role: str, rank: int) -> None:
    """Log lines on stderr tagged with the worker's role and rank, at `runtime.log_level`."""
    logging.basicConfig(level=config.runtime.log_level, stream=sys.stderr,
                        format=f"%(asctime)s [{role} r{rank}] %(levelname)s %(message)s")


def main(argv=None) -> int:
    args = parse_args(argv)
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent, which shuts us down
    # no cleanup is owed on SIGTERM (the scheduler owns shared memory), and exiting at once avoids
    # tracebacks from torch.distributed / ZMQ teardown in the middle of a call
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    config = load_config(args.config)
    configure_logging(config, args.role, args.rank)
    try:
        Worker(args, config).serve()
    except Exception:  # noqa: BLE001 - report startup failures before exiting
        logging.getLogger("spava").error("worker failed:\n%s", traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: peers may already be gone (torch.distributed atexit hooks)
