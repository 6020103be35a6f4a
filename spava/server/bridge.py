"""Pipeline requests seen from the event loop, without blocking it.

`Pipeline.submit` returns a `RequestHandle`: a `concurrent.futures.Future` resolved by the
pipeline's client thread, plus a blocking `tokens()` iterator. `PendingRequest` bridges both onto
the loop: the future through `asyncio.wrap_future` (resolved with call_soon_threadsafe), the tokens
by one short-lived thread per request that drains `tokens()` into an `asyncio.Queue`. `submit` runs
`Pipeline.submit` in a worker thread, because encoded media are written to shared memory there.
"""

from __future__ import annotations

import asyncio
import threading
import time

_END = object()  # the token stream's end marker in the queue


class PendingRequest:
    """One submitted request: `next_delta()` yields text deltas (None at the end), `result()` the RunResult."""

    def __init__(self, handle, loop: asyncio.AbstractEventLoop, submitted_at: float):
        self.handle = handle
        self.request_id = handle.request_id
        self.submitted_at = submitted_at  # time.perf_counter() when the HTTP request arrived
        self.first_delta_at: float | None = None
        self._loop = loop
        self._deltas: asyncio.Queue = asyncio.Queue()
        self._result = asyncio.wrap_future(handle, loop=loop)
        self._result.add_done_callback(_retrieve)
        self._is_cancelled = False
        threading.Thread(target=self._drain, name=f"spava-http-{self.request_id}", daemon=True).start()

    def _drain(self) -> None:
        """Thread: move the handle's streamed text onto the loop's queue."""
        try:
            for text in self.handle.tokens():
                if text:
                    self._post(text)
        finally:
            self._post(_END)

    def _post(self, item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._deltas.put_nowait, item)
        except RuntimeError:  # the loop closed (server shutting down): nobody reads any more
            pass

    async def next_delta(self) -> str | None:
        """The next text delta, or None once the request ended (then `result()` is ready soon)."""
        item = await self._deltas.get()
        if item is _END:
            self._deltas.put_nowait(_END)  # later calls see the end too
            return None
        if self.first_delta_at is None:
            self.first_delta_at = time.perf_counter()
        return item

    async def result(self):
        """The `RunResult`; raises the pipeline's `RequestError` on failure."""
        return await asyncio.shield(self._result)

    def cancel(self) -> None:
        """Ask the pipeline to cancel (once); the request then fails with kind "cancelled"."""
        if not self._is_cancelled and not self.handle.done():
            self._is_cancelled = True
            self.handle.cancel()

    @property
    def is_cancelled(self) -> bool:
        return self._is_cancelled


def _retrieve(future: asyncio.Future) -> None:
    """Mark a failed future's exception as seen (a cancelled client never awaits it)."""
    if not future.cancelled():
        future.exception()


async def submit(pipeline, submission, media_value, submitted_at: float) -> PendingRequest:
    """Submit on a worker thread (media bytes are written to shared memory); always streamed, so
    the server knows each request's time to first token."""
    kwargs = dict(stream=True, document=submission.document, video_options=submission.video_options or None,
                  **submission.sampling)
    video = None
    if submission.media is not None and submission.media.kind == "image":
        kwargs["image"] = media_value
    else:
        video = media_value
    handle = await asyncio.to_thread(pipeline.submit, video, submission.prompt, **kwargs)
    return PendingRequest(handle, asyncio.get_running_loop(), submitted_at)


async def cancel_on_disconnect(receive, pending: PendingRequest) -> None:
    """Wait for the client to go away (`http.disconnect`), then cancel its request."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            pending.cancel()
            return
