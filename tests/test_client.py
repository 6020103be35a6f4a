"""The client end, against a fake scheduler (a ROUTER in a thread): nothing waits forever.

No server, a wrong address or a server that goes silent mid-request each end in a clear error
within a bounded time; a request that ends without an answer frees its shared-memory payload; a
closed pipeline and a duplicate request id are refused before anything is written.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import zmq

from spava.comm.messages import (CancelReq, ErrorOutput, ResultOutput, StatusOutput, StatusReq, SubmitReq,
                                 decode_message, encode_message)
from spava.config import load_config
from spava.runtime.launch import free_port
from spava.runtime.pipeline import Pipeline, RequestError

FAST = ["runtime.heartbeat_interval_s=0.1", "runtime.heartbeat_timeout_s=1.0", "runtime.connect_timeout_s=2"]


class FakeScheduler:
    """Answers pings and status queries; answers a SubmitReq only when `is_answering`; `is_silent`
    stops every answer (a stopped or hung server)."""

    def __init__(self, shm_dir: str):
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.shm_dir = shm_dir
        self.is_answering, self.is_silent = True, False
        self.submits: list[SubmitReq] = []
        self.cancelled: list[str] = []
        self.client = b""  # identity of the last client that submitted
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(self.address)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._socket.poll(20):
                continue
            identity, data = self._socket.recv_multipart()
            if self.is_silent:
                continue
            message = decode_message(data)
            if isinstance(message, StatusReq):
                self._reply(identity, StatusOutput(message.request_id, True, {}, {}, 0))
            elif isinstance(message, SubmitReq):
                self.submits.append(message)
                self.client = identity
                if self.is_answering:
                    self._reply(identity, _result(message.request_id))
            elif isinstance(message, CancelReq):
                self.cancelled.append(message.request_id)
            elif isinstance(message, (ResultOutput, ErrorOutput)):  # from `answer`, on this thread
                self._reply(self.client, message)

    def _reply(self, identity: bytes, message) -> None:
        self._socket.send_multipart([identity, encode_message(message)])

    def answer(self, message) -> None:
        """Send `message` to the last client that submitted (through the server's own thread)."""
        with self._context.socket(zmq.DEALER) as inject:
            inject.connect(self.address)
            inject.send(encode_message(message))
            time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close()
        self._context.term()


def _result(request_id: str) -> ResultOutput:
    return ResultOutput(request_id, [1], "ok", "length", {}, 0, 1, 0, "full", 1, "hash")


@pytest.fixture
def server(tmp_path):
    fake = FakeScheduler(str(tmp_path))
    yield fake
    fake.close()


def _wait_for_submits(server: FakeScheduler, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(server.submits) < count:
        assert time.monotonic() < deadline, "the fake scheduler got no request"
        time.sleep(0.05)


def _client(address: str, shm_dir) -> Pipeline:
    return Pipeline.connect(address, load_config(None, [*FAST, f"runtime.shm_dir={shm_dir}"]))


def test_no_server_is_a_connection_error_naming_the_address(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"no spava pipeline answered at {address}"):
        _client(address, tmp_path).run(None, "anyone there?")
    assert time.monotonic() - start < 10


def test_an_invalid_address_is_a_connection_error(tmp_path):
    with pytest.raises(ConnectionError, match="invalid control address 'nonsense://x'"):
        _client("nonsense://x", tmp_path).start()


def test_a_server_that_goes_silent_fails_pending_requests_and_frees_their_payload(server, tmp_path):
    with _client(server.address, tmp_path) as client:
        assert client.run(None, "hello").text == "ok"
        server.is_answering = False
        handle = client.submit(b"encoded video bytes", "and now?")
        deadline = time.monotonic() + 5
        while not server.submits[-1:] or server.submits[-1].request_id != handle.request_id:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.is_silent = True  # died or stopped: no more answers of any kind
        start = time.monotonic()
        with pytest.raises(RequestError) as error:
            handle.result(timeout=10)
        assert error.value.kind == "unhealthy" and server.address in str(error.value)
        assert time.monotonic() - start < 5  # heartbeat_timeout_s=1, plus the ping interval
        assert not [name for name in os.listdir(tmp_path) if name.startswith("spava-")]
        server.is_silent, server.is_answering = False, True  # it comes back: the connection works again
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.run(None, "back?").text == "ok"
                break
            except RequestError:
                assert time.monotonic() < deadline
                time.sleep(0.2)


def test_a_closed_pipeline_refuses_requests_before_writing_anything(server, tmp_path):
    client = _client(server.address, tmp_path).start()
    client.close()
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(RuntimeError, match="closed; call start"):
        client.submit(frames, "still there?")
    assert not os.listdir(tmp_path)
    with client:  # starts again from scratch
        assert client.run(None, "again").text == "ok"


def test_a_duplicate_request_id_is_refused_and_the_first_keeps_working(server, tmp_path):
    with _client(server.address, tmp_path) as client:
        server.is_answering = False
        first = client.submit(None, "first", request_id="same")
        with pytest.raises(ValueError, match="'same' is already in use"):
            client.submit(np.zeros((2, 8, 8, 3), np.uint8), "second", request_id="same")
        assert not os.listdir(tmp_path)
        _wait_for_submits(server, 1)
        server.answer(_result("same"))  # the scheduler answers the first request: its handle gets the result
        assert first.result(timeout=5).text == "ok"


def test_payloads_never_sent_are_freed_on_close(tmp_path):
    """Requests queued when the pipeline closes (or whose server is gone) leave nothing in tmpfs."""
    fake = FakeScheduler(str(tmp_path))
    client = _client(fake.address, tmp_path).start()
    fake.is_answering = False
    handles = [client.submit(b"x" * 1000, f"q{i}") for i in range(5)]
    client.close()
    fake.close()
    for handle in handles:
        with pytest.raises(RequestError) as error:
            handle.result(timeout=5)
        assert error.value.kind == "cancelled"
    assert not os.listdir(tmp_path)


def test_closing_asks_the_scheduler_to_drop_the_pending_requests(server, tmp_path):
    client = _client(server.address, tmp_path).start()
    server.is_answering = False
    handles = [client.submit(None, f"q{i}", request_id=f"r{i}") for i in range(3)]
    _wait_for_submits(server, 3)
    client.close()
    for handle in handles:
        with pytest.raises(RequestError):
            handle.result(timeout=5)
    deadline = time.monotonic() + 5
    while sorted(server.cancelled) != ["r0", "r1", "r2"]:
        assert time.monotonic() < deadline, f"cancellations the scheduler got: {server.cancelled}"
        time.sleep(0.05)


def test_error_answers_resolve_the_handle(server, tmp_path):
    with _client(server.address, tmp_path) as client:
        server.is_answering = False
        handle = client.submit(None, "q", request_id="err-1")
        _wait_for_submits(server, 1)
        server.answer(ErrorOutput("err-1", "admission", "overloaded", "queue full"))
        with pytest.raises(RequestError) as error:
            handle.result(timeout=5)
        assert (error.value.kind, error.value.stage) == ("overloaded", "admission")
