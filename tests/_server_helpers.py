"""Helpers of the HTTP server tests: a uvicorn server on a free loopback port in a thread, a stub
pipeline for failures that are hard to provoke, and a strict parser of server-sent events."""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import Future

from spava.runtime.pipeline import RequestError, RunResult
from spava.comm.messages import StatusOutput


class ServerThread:
    """`with ServerThread(app) as server:` serves `app` at `server.base_url` until the block ends."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base_url = ""

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def run_result(request_id: str, text: str, num_tokens: int, finish_reason: str = "length") -> RunResult:
    return RunResult(request_id=request_id, token_ids=list(range(num_tokens)), text=text, finish_reason=finish_reason,
                     timings={"layout_queue_s": 0.01, "prefill_s": 0.02, "decode_s": 0.03, "total_s": 0.06},
                     num_visual_tokens=7, num_prompt_tokens=20, num_frames=2, method="spava", world_size=2,
                     config_hash="stubhash")


class StubHandle(Future):
    """A RequestHandle look-alike: its deltas and outcome are set by the stub pipeline."""

    def __init__(self, request_id: str):
        super().__init__()
        self.request_id = request_id
        self.stream: queue.Queue = queue.Queue()
        self.cancel_count = 0

    def tokens(self):
        while (item := self.stream.get()) is not None:
            yield item

    def cancel(self) -> bool:
        self.cancel_count += 1
        if not self.done():
            self.fail("admission", "cancelled", "cancelled by the client")
        return False

    def finish(self, deltas: list[str], finish_reason: str = "length") -> None:
        for delta in deltas:
            self.stream.put(delta)
        self.stream.put(None)
        self.set_result(run_result(self.request_id, "".join(deltas), len(deltas), finish_reason))

    def fail(self, stage: str, kind: str, message: str) -> None:
        self.stream.put(None)
        self.set_exception(RequestError(self.request_id, stage, kind, message))


class StubPipeline:
    """Answers each request per `behaviour(handle, video, prompt, kwargs)`; records every call."""

    def __init__(self, behaviour=None, is_healthy: bool = True):
        self.behaviour = behaviour or (lambda handle, video, prompt, kwargs: handle.finish(["Hel", "lo", "!"]))
        self.is_healthy = is_healthy
        self.calls: list[tuple] = []
        self.handles: list[StubHandle] = []

    def submit(self, video, prompt, *, document=None, stream=False, timeout_s=None, video_options=None,
               request_id=None, image=None, **sampling):
        handle = StubHandle(request_id or f"stub{len(self.handles)}")
        kwargs = dict(document=document, stream=stream, video_options=video_options, image=image, **sampling)
        self.calls.append((video, prompt, kwargs))
        self.handles.append(handle)
        self.behaviour(handle, video, prompt, kwargs)
        return handle

    def status(self, timeout_s: float = 10.0) -> StatusOutput:
        return StatusOutput("status", self.is_healthy, {"model-0": "idle"}, {"video": 1, "layout": 0, "model": 2}, 3,
                            "" if self.is_healthy else "workers kept dying")


def parse_sse(text: str) -> list:
    """Every event of an SSE body: JSON payloads, then the string "[DONE]". Fails on any malformed line."""
    events = []
    assert text.endswith("\n\n"), "an SSE body ends with a blank line"
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 1 and lines[0].startswith("data: "), f"malformed SSE event {block!r}"
        payload = lines[0][len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    assert events and events[-1] == "[DONE]" and events.count("[DONE]") == 1, "the stream ends with one [DONE]"
    return events


def check_stream(events: list, model_id: str, include_usage: bool = False) -> tuple[str, str, dict | None]:
    """Check an answer's chunks as OpenAI shapes them; returns (text, finish_reason, usage)."""
    chunks = events[:-1]
    usage = None
    if include_usage:
        *chunks, last = chunks
        assert last["choices"] == [] and set(last["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
        usage = last["usage"]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
    for index, c in enumerate(chunks):
        assert c["object"] == "chat.completion.chunk" and c["model"] == model_id and len(c["choices"]) == 1
        assert ("role" in c["choices"][0]["delta"]) == (index == 0), "only the first chunk carries the role"
        assert (c["choices"][0]["finish_reason"] is not None) == (index == len(chunks) - 1)
        assert ("usage" in c) == include_usage and (c.get("usage") is None)
    assert chunks[-1]["choices"][0]["delta"] == {}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    return text, chunks[-1]["choices"][0]["finish_reason"], usage
