"""`POST /v1/chat/completions`: one request in, one pipeline request out, the answer back.

Non-streaming: wait for the `RunResult` and answer a `chat.completion`. Streaming: wait for the
first text delta (so that a request refused by the pipeline still gets its HTTP status), then send
server-sent events: one `chat.completion.chunk` per delta (the first also carries the role), a
final chunk with `finish_reason`, the usage chunk when `stream_options.include_usage` is set, and
`data: [DONE]`. A failure after the first chunk is sent as one `data: {"error": ...}` event.

A client that disconnects, before or during the answer, cancels its pipeline request (which frees
what it holds): a task watches the connection, and the event generator also cancels when it is
stopped early.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi.responses import JSONResponse, StreamingResponse

from spava.runtime.pipeline import RequestError
from spava.server.bridge import PendingRequest, submit, wait_for_disconnect
from spava.server.errors import APIError, from_request_error
from spava.server.protocol import FINISH_REASONS, ChatCompletionRequest, chunk, completion, usage_chunk
from spava.server.translate import Submission, to_submission

# the metrics outcome of a refusal by the server itself (before the pipeline saw the request)
_REFUSAL_OUTCOMES = {400: "bad_input", 403: "forbidden", 404: "not_found", 413: "media_too_large"}


class _Lifetime:
    """Books a submitted request once: the running gauge, its outcome, and the disconnect watcher
    (a client that goes away before the answer is complete abandons its request)."""

    def __init__(self, state, pending: PendingRequest, receive):
        self.state, self.pending, self.is_closed = state, pending, False
        state.metrics.running.inc()
        self.watcher = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive) -> None:
        await wait_for_disconnect(receive)
        self.abandon()

    def close(self, outcome: str, result=None) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        if asyncio.current_task() is not self.watcher:
            self.watcher.cancel()
        metrics = self.state.metrics
        metrics.running.dec()
        metrics.finished(outcome)
        if result is not None:
            metrics.answered(result, self.pending.submitted_at, self.pending.first_delta_at, time.perf_counter())

    def abandon(self) -> None:
        """The answer will not be delivered (client gone, server stopping): cancel the pipeline request."""
        if not self.is_closed:
            self.pending.cancel()
            self.close("cancelled")


def _sse(payload) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def _prepare(state, body: ChatCompletionRequest, arrived: float) -> tuple[Submission, PendingRequest]:
    try:
        submission = to_submission(body, state.served)
        media = await state.media.resolve(submission.media) if submission.media is not None else None
        pending = await submit(state.pipeline, submission, media.value if media else None, arrived,
                               state.drain_pool)
    except APIError as error:
        state.metrics.finished(_REFUSAL_OUTCOMES.get(error.status, "bad_input"))
        raise
    return submission, pending


async def create_chat_completion(state, request, body: ChatCompletionRequest):
    """The endpoint body; `state` is the app's `ServerState`, `request` the Starlette request."""
    arrived = time.perf_counter()
    submission, pending = await _prepare(state, body, arrived)
    lifetime = _Lifetime(state, pending, request.receive)
    completion_id = f"chatcmpl-{pending.request_id}"
    try:
        first = await pending.next_delta() if submission.stream else None
        result = await pending.result() if first is None else None
    except RequestError as error:
        lifetime.close(error.kind)
        raise from_request_error(error, state.options.retry_after_s) from None
    except BaseException:
        lifetime.abandon()
        raise
    if not submission.stream:
        lifetime.close("ok", result)
        return JSONResponse(completion(completion_id, state.served.model_id, result))
    events = _events(state, lifetime, submission, completion_id, first, result)
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(state, lifetime: _Lifetime, submission: Submission, completion_id: str, first: str | None, result):
    """The server-sent events of a streamed answer whose first delta (or result) is known."""
    pending, model_id, created = lifetime.pending, state.served.model_id, int(time.time())
    include_usage = submission.include_usage
    try:
        yield _sse(chunk(completion_id, model_id, created, {"role": "assistant", "content": first or ""},
                         include_usage=include_usage))
        if result is None:
            while (text := await pending.next_delta()) is not None:
                yield _sse(chunk(completion_id, model_id, created, {"content": text}, include_usage=include_usage))
            try:
                result = await pending.result()
            except RequestError as error:
                lifetime.close(error.kind)
                yield _sse(from_request_error(error, state.options.retry_after_s).body())
                yield "data: [DONE]\n\n"
                return
        lifetime.close("ok", result)
        finish_reason = FINISH_REASONS.get(result.finish_reason, result.finish_reason)
        yield _sse(chunk(completion_id, model_id, created, {}, finish_reason, include_usage=include_usage))
        if include_usage:
            yield _sse(usage_chunk(completion_id, model_id, created, result))
        yield "data: [DONE]\n\n"
    finally:
        lifetime.abandon()  # no-op once closed; the client left or the server is stopping otherwise
