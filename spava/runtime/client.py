"""The client end of the control socket: request handles and the thread that talks to the scheduler.

Runs in the process that holds a `Pipeline` (local, or connected to `spava launch` elsewhere). One
thread owns a ZMQ DEALER connected to the scheduler's ROUTER: it sends the queued messages
(`SubmitReq`, `CancelReq`, `StatusReq`), resolves each `RequestHandle` from its answer and watches
the scheduler's liveness. When nothing arrived for `heartbeat_interval_s` it pings (a `StatusReq`);
when no answer came for `heartbeat_timeout_s` (the server died, is stopped or unreachable) every
pending request fails with kind "unhealthy" instead of waiting forever, and a later answer brings
the connection back. `open` checks the first contact: no answer within the connect timeout is a
`ConnectionError` naming the address.

A request's payload file (encoded video or frames the client wrote to shared memory) is the
client's until the scheduler adopts it; a request that ends here without an answer (lost server,
closed pipeline, never sent) has its file unlinked by the client.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import zmq

from spava.comm.messages import (
    CancelReq, ErrorOutput, MessageError, ResultOutput, StatusOutput, StatusReq, SubmitReq, TensorRef, TokenOutput,
    decode_message, encode_message,
)
from spava.comm.security import secure_client
from spava.comm.shm import unlink_shared

logger = logging.getLogger("spava.client")
PING_PREFIX = "ping-"


class RequestError(RuntimeError):
    """A request failed; `stage` and `kind` say where and why.

    Kinds: bad_input (fix the request) | overloaded (queue full: retry later) | unhealthy (the
    pipeline refuses work or cannot be reached) | timeout | cancelled | worker_died | internal.
    """

    def __init__(self, request_id: str, stage: str, kind: str, message: str):
        super().__init__(f"[{stage}] {message}")
        self.request_id, self.stage, self.kind = request_id, stage, kind


class RunResult(ResultOutput):
    """The answer to one request, with where the time went.

    Fields (from the wire message `ResultOutput`): request_id, token_ids, text, finish_reason, timings
    (seconds per stage and queue), num_visual_tokens, num_prompt_tokens, num_frames, method,
    world_size, config_hash, warnings.
    """


class RequestHandle(Future):
    """A Future of `RunResult` that also yields streamed text (`tokens()`) when submitted with stream."""

    def __init__(self, request_id: str, connection: "ClientConnection"):
        super().__init__()
        self.request_id = request_id
        self._connection = connection
        self._stream: queue.Queue = queue.Queue()

    def cancel(self) -> bool:
        self._connection.send(CancelReq(self.request_id))
        return False  # the outcome arrives as RequestError(kind="cancelled")

    def tokens(self) -> Iterator[str]:
        """Text deltas as they are generated (needs `stream=True`), until the request ends."""
        while True:
            item = self._stream.get()
            if item is None:
                return
            yield item

    def _end(self, *, result=None, error: Optional[RequestError] = None) -> None:
        self._stream.put(None)
        if self.done():
            return
        if error is not None:
            self.set_exception(error)
        else:
            self.set_result(result)


@dataclass
class _Pending:
    handle: RequestHandle
    payload: Optional[TensorRef]  # the client's shared-memory file of this request, if any


class ClientConnection:
    """The DEALER socket to one scheduler, its thread, and the requests waiting for an answer."""

    def __init__(self, address: str, secret: str, *, heartbeat_interval_s: float, heartbeat_timeout_s: float,
                 check: Callable[[], Optional[str]] | None = None):
        """`check()` (optional, polled by the thread) returns why the server cannot answer any more
        (e.g. the in-process scheduler thread ended), or None."""
        self.address = address
        self.secret = secret
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.check = check
        self._outbox: queue.Queue = queue.Queue()
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._answered = threading.Event()
        self._is_closed = False
        self._thread: threading.Thread | None = None

    # ----- lifecycle (caller's thread) ------------------------------------------------------------

    def open(self, timeout_s: float) -> None:
        """Connect and wait for the scheduler's first answer; ConnectionError naming the address if
        the address is invalid or nothing answers within `timeout_s`."""
        context = zmq.Context()
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.IDENTITY, f"client-{uuid.uuid4().hex[:8]}".encode())
        socket.setsockopt(zmq.LINGER, 0)
        try:
            secure_client(socket, self.secret)
            socket.connect(self.address)
        except zmq.ZMQError as error:
            socket.close()
            context.term()
            raise ConnectionError(f"invalid control address {self.address!r} ({error}); use tcp://HOST:PORT "
                                  "or ipc://PATH as printed by `spava launch`") from None
        self._thread = threading.Thread(target=self._loop, args=(context, socket), daemon=True,
                                        name="spava-client")
        self._thread.start()
        if not self._answered.wait(timeout_s):
            self.close("unhealthy", "no connection")
            secret_hint = " and that runtime.secret / SPAVA_SECRET match the server's" if self.secret else ""
            raise ConnectionError(f"no spava pipeline answered at {self.address} within {timeout_s:g} s; check that "
                                  f"`spava launch` runs there{secret_hint} (runtime.connect_timeout_s)")

    def close(self, kind: str, message: str) -> None:
        """Fail every pending request with `kind`, free their payloads, ask the scheduler to drop
        them, stop the thread."""
        with self._lock:
            self._is_closed = True
            pending, self._pending = self._pending, {}
        for request_id, item in pending.items():
            unlink_shared(item.payload)
            item.handle._end(error=RequestError(request_id, "scheduler", kind, message))
            if not request_id.startswith("status-"):
                self._outbox.put(CancelReq(request_id))
        self._stop.set()
        # ident is None until start(): Ctrl-C can land between creating the thread and starting it
        thread = self._thread
        if thread is not None and thread.ident is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._drain_outbox()

    @property
    def is_closed(self) -> bool:
        return self._is_closed

    # ----- requests (any thread) ------------------------------------------------------------------

    def register(self, handle: RequestHandle) -> None:
        """Reserve `handle.request_id`; ValueError if a request of this client already uses it."""
        with self._lock:
            if self._is_closed:
                raise RuntimeError("the pipeline is closed")
            if handle.request_id in self._pending:
                raise ValueError(f"request id {handle.request_id!r} is already in use by a pending request; "
                                 "pass another request_id (or none: one is generated)")
            self._pending[handle.request_id] = _Pending(handle, None)

    def unregister(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def submit(self, message: SubmitReq) -> None:
        """Queue a registered request; its payload (`message.video_ref`) is freed if it never gets sent."""
        with self._lock:
            item = self._pending.get(message.request_id)
            if self._is_closed or item is None:
                unlink_shared(message.video_ref)
                raise RuntimeError("the pipeline is closed")
            item.payload = message.video_ref
            self._outbox.put(message)

    def send(self, message) -> None:
        if not self._is_closed:
            self._outbox.put(message)

    # ----- the socket thread ----------------------------------------------------------------------

    def _loop(self, context: zmq.Context, socket: zmq.Socket) -> None:
        last_heard = last_ping = last_turn = time.monotonic()
        try:
            self._send(socket, StatusReq(f"{PING_PREFIX}{uuid.uuid4().hex[:8]}"))
            while not self._stop.is_set():
                self._flush(socket)
                if socket.poll(5):
                    while socket.poll(0):
                        self._on_message(socket.recv())
                    last_heard = time.monotonic()
                    self._answered.set()
                now = time.monotonic()
                if now - last_turn > self.heartbeat_timeout_s / 2:  # this process was stopped or starved:
                    last_heard = max(last_heard, now - self.heartbeat_interval_s)  # the silence is ours
                last_turn = now
                if now - max(last_heard, last_ping) >= self.heartbeat_interval_s:
                    self._send(socket, StatusReq(f"{PING_PREFIX}{uuid.uuid4().hex[:8]}"))
                    last_ping = now
                problem = self.check() if self.check is not None else None
                if problem is not None:
                    self._fail_all("internal", problem, socket)
                elif now - last_heard > self.heartbeat_timeout_s:  # also fails new requests while it lasts
                    self._fail_all("unhealthy", (
                        f"no answer from the pipeline at {self.address} for {now - last_heard:.1f} s "
                        f"(runtime.heartbeat_timeout_s={self.heartbeat_timeout_s:g}): it died, is stopped or "
                        "cannot be reached"), socket)
        finally:
            self._flush(socket, is_final=True)
            socket.setsockopt(zmq.LINGER, 500)  # let the last cancellations leave, briefly
            socket.close()
            context.term()

    def _send(self, socket: zmq.Socket, message) -> bool:
        """Send without blocking: a DEALER whose server is gone queues up to its high-water mark and
        would then block; past it the message is dropped (False)."""
        try:
            socket.send(encode_message(message), zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def _flush(self, socket: zmq.Socket, is_final: bool = False) -> None:
        """Send what is queued; the final flush (closing) sends no new request, and frees its payload."""
        while True:
            try:
                message = self._outbox.get_nowait()
            except queue.Empty:
                return
            if is_final and isinstance(message, SubmitReq):
                unlink_shared(message.video_ref)
                continue
            if not self._send(socket, message) and isinstance(message, SubmitReq):
                self._end(message.request_id, error=RequestError(
                    message.request_id, "scheduler", "unhealthy",
                    f"the pipeline at {self.address} takes no messages (the queue to it is full); it is gone or "
                    "stopped"))

    def _fail_all(self, kind: str, message: str, socket: zmq.Socket) -> None:
        """Fail every pending request (and ask the server to drop them, should it come back)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if pending:
            logger.error("%s; failing %d pending request(s)", message, len(pending))
        for request_id, item in pending.items():
            unlink_shared(item.payload)
            item.handle._end(error=RequestError(request_id, "scheduler", kind, message))
            if not request_id.startswith("status-"):
                self._send(socket, CancelReq(request_id))

    def _end(self, request_id: str, *, result=None, error: Optional[RequestError] = None) -> None:
        with self._lock:
            item = self._pending.pop(request_id, None)
        if item is None:
            return
        unlink_shared(item.payload)  # a no-op once the scheduler adopted (renamed) it
        item.handle._end(result=result, error=error)

    def _on_message(self, data: bytes) -> None:
        try:
            message = decode_message(data)
        except MessageError as error:
            logger.error("dropped a malformed message from the scheduler: %s", error)
            return
        request_id = getattr(message, "request_id", "")
        if isinstance(message, TokenOutput):
            item = self._pending.get(request_id)
            if item is not None:
                item.handle._stream.put(message.text)
        elif isinstance(message, ErrorOutput):
            self._end(request_id, error=RequestError(request_id, message.stage, message.kind, message.message))
        elif isinstance(message, ResultOutput):
            self._end(request_id, result=RunResult(**vars(message)))
        elif isinstance(message, StatusOutput):
            self._end(request_id, result=message)

    def _drain_outbox(self) -> None:
        """Messages never sent: free the payloads of their requests."""
        while True:
            try:
                message = self._outbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(message, SubmitReq):
                unlink_shared(message.video_ref)
