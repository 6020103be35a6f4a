"""Pipeline requests seen from the event loop, without blocking it.

`Pipeline.submit` returns a `RequestHandle`: a `concurrent.futures.Future` resolved by the
pipeline's client thread, plus a blocking `tokens()` iterator. `PendingRequest` bridges both onto
the loop: the future through `asyncio.wrap_future` (resolved with call_soon_threadsafe), the tokens
by a thread of the server's drain pool that moves `tokens()` into an `asyncio.Queue` (threads are
reused: starting one per request would block the loop a little each time). `submit` runs
`Pipeline.submit` in a worker thread, because encoded media are written to shared memory there.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

logger = logging.getLogger("spava.server")
_END = object()  # the token stream's end marker in the queue


class DrainPool:
    """Daemon threads for blocking token drains: reused, a new one started only when all are busy.

    Daemon threads, so a drain that never ends (a pipeline that stopped answering) cannot hold the
    process at exit, unlike `concurrent.futures` workers.
    """

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._num_idle = 0
        self._num_threads = 0

    def submit(self, job) -> None:
        with self._lock:
            is_new_thread_needed = self._num_idle == 0
            if is_new_thread_needed:
                self._num_threads += 1
            else:
                self._num_idle -= 1  # that idle thread takes a job (any job: the counts balance)
        self._jobs.put(job)
        if is_new_thread_needed:
            threading.Thread(target=self._work, name="spava-http-stream", daemon=True).start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:  # a drain never raises by design; keep the thread serving if one does
                logger.exception("a token stream drain failed")
            with self._lock:
                self._num_idle += 1

    @property
    def num_threads(self) -> int:
        return self._num_threads

    def close(self) -> None:
        """Let every thread end once it is idle."""
        with self._lock:
            num_threads = self._num_threads
        for _ in range(num_threads):
            self._jobs.put(None)


class PendingRequest:
    """One submitted request: `next_delta()` yields text deltas (None at the end), `result()` the RunResult."""

    def __init__(self, handle, loop: asyncio.AbstractEventLoop, submitted_at: float, drain_pool: DrainPool):
        self.handle = handle
        self.request_id = handle.request_id
        self.submitted_at = submitted_at  # time.perf_counter() when the HTTP request arrived
        self.first_delta_at: float | None = None
        self._loop = loop
        self._deltas: asyncio.Queue = asyncio.Queue()
        self._result = asyncio.wrap_future(handle, loop=loop)
        self._result.add_done_callback(_retrieve)
        self._is_cancelled = False
        drain_pool.submit(self._drain)

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


async def submit(pipeline, submission, media_value, submitted_at: float, pool: DrainPool) -> PendingRequest:
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
    return PendingRequest(handle, asyncio.get_running_loop(), submitted_at, pool)


async def wait_for_disconnect(receive) -> None:
    """Return once the client has gone away (`http.disconnect`); the request body is already read."""
    while (await receive())["type"] != "http.disconnect":
        pass
