"""`Pipeline`: the Python API. It starts the scheduler (a thread here) and the workers, submits
requests over ZMQ and resolves their futures. It owns no model.

    with Pipeline.from_yaml("configs/demo_cpu.yaml") as pipe:
        result = pipe.run("video.mp4", "What happens in this video?", max_new_tokens=64)
        print(result.text, result.timings)
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Iterator

import zmq

from spava.comm.messages import (
    CancelReq, ErrorOutput, MessageError, ResultOutput, StatusOutput, StatusReq, SubmitReq, TokenOutput,
    decode_message, encode_message,
)
from spava.config import PipelineConfig, config_hash, config_to_yaml, load_config


class RequestError(RuntimeError):
    """A request failed; `stage` and `kind` say where and why."""

    def __init__(self, request_id: str, stage: str, kind: str, message: str):
        super().__init__(f"[{stage}] {message}")
        self.request_id, self.stage, self.kind = request_id, stage, kind


class RunResult(ResultOutput):
    """The answer to one request, with where the time went.

    Fields (from the wire message `ResultOutput`): request_id, token_ids, text, finish_reason, timings
    (seconds per stage and queue), num_visual_tokens, num_prompt_tokens, num_frames, method,
    world_size, config_hash.
    """


class RequestHandle(Future):
    """A Future of `RunResult` that also yields streamed text (`tokens()`) when submitted with stream."""

    def __init__(self, request_id: str, pipeline: "Pipeline"):
        super().__init__()
        self.request_id = request_id
        self._pipeline = pipeline
        self._stream: queue.Queue = queue.Queue()

    def cancel(self) -> bool:
        self._pipeline._outbox.put(CancelReq(self.request_id))
        return False  # the outcome arrives as RequestError(kind="cancelled")

    def tokens(self) -> Iterator[str]:
        """Text deltas as they are generated (needs `stream=True`), until the request ends."""
        while True:
            item = self._stream.get()
            if item is None:
                return
            yield item


def _media_message(media: Any, media_type: str, request_id: str, shm_dir: str) -> dict:
    """Turn a path / bytes / frames (or an image array) / None into SubmitReq media fields (data goes to
    shared memory)."""
    from spava.comm.transport import write_shared, write_shared_bytes

    if media is None:
        return dict(video_kind="none")
    if isinstance(media, (str, os.PathLike)):
        return dict(video_kind="path", video_path=os.path.abspath(os.fspath(media)), media_type=media_type)
    if isinstance(media, (bytes, bytearray, memoryview)):
        return dict(video_kind="bytes", video_ref=write_shared_bytes(bytes(media), shm_dir, request_id, media_type),
                    media_type=media_type)
    import numpy as np
    import torch

    frames = torch.as_tensor(np.stack([np.asarray(f) for f in media]) if isinstance(media, list) else media)
    if media_type == "image" and frames.dim() == 3:
        frames = frames[None]
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError("video frames must be uint8 RGB [T, H, W, 3] (an array or a list of [H, W, 3] arrays); "
                         "an image array uint8 RGB [H, W, 3]")
    return dict(video_kind="frames", video_ref=write_shared(frames, shm_dir, request_id, media_type),
                media_type=media_type)


class Pipeline:
    """Runs a YAML-defined spava pipeline; see the module docstring."""

    def __init__(self, config: PipelineConfig, *, is_quiet: bool = False, log_path: str | None = None,
                 node_layout=None):
        """`node_layout` (spava.runtime.nodes.NodeLayout): this process is the head node of a multi-node
        pipeline and starts only the head's workers; the other nodes run `spava launch --node-rank R`."""
        self.config = config
        self.node_layout = node_layout
        self.is_quiet = is_quiet
        self.log_path = log_path
        self._outbox: queue.Queue = queue.Queue()
        self._pending: dict[str, RequestHandle] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._tmp: str | None = None
        self._connect_address: str | None = None
        self._data_server = None
        self.control_address: str | None = None
        self.scheduler = None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = (), **kwargs) -> "Pipeline":
        return cls(load_config(path, overrides), **kwargs)

    @classmethod
    def from_config(cls, config: PipelineConfig, **kwargs) -> "Pipeline":
        return cls(config, **kwargs)

    @classmethod
    def connect(cls, address: str, config: PipelineConfig | None = None, *, secret: str | None = None) -> "Pipeline":
        """A client of a pipeline already served elsewhere (`spava launch`), at its control address."""
        pipeline = cls(config or load_config())
        if secret is not None:
            pipeline.config.runtime.secret = secret
        pipeline._connect_address = address
        return pipeline

    # ----- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "Pipeline":
        """Start the scheduler and every worker; returns once all workers said ready."""
        from spava.runtime.launch import LocalLauncher
        from spava.runtime.scheduler import Scheduler

        if self.scheduler is not None or self._threads:
            return self
        if self._connect_address is not None:
            self.control_address = self._connect_address
            self._spawn(self._client_loop, self._connect_address)
            return self
        from spava.models.family import get_family

        get_family(self.config.model).prepare()  # e.g. convert a GGUF once, before any worker loads it
        self._tmp = tempfile.mkdtemp(prefix="spava-")
        config_path = str(Path(self._tmp) / "pipeline.yaml")
        Path(config_path).write_text(config_to_yaml(self.config))
        address = self.config.runtime.control_address
        if address == "auto":
            address = f"ipc://{self._tmp}/control"
        self.control_address = address
        from spava.comm.security import resolve_secret

        secret = resolve_secret(self.config.runtime.secret)
        launcher = LocalLauncher(config_path, address, secret=secret, is_quiet=self.is_quiet, log_path=self.log_path)
        self.scheduler = Scheduler(self.config, address, launcher, config_hash=config_hash(self.config), secret=secret,
                                   streams_frames=self.node_layout is None)
        from spava.runtime.launch import local_specs

        local = local_specs(self.config, self.node_layout) if self.node_layout is not None else None
        self.scheduler.start_workers({spec.worker_id for spec in local} if local is not None else None)
        if self.node_layout is not None:
            from spava.comm.data_server import DataServer

            self._data_server = DataServer(self.node_layout.data_address, self.config.runtime.shm_dir, secret)
        self._spawn(self.scheduler.run, self._stop)
        self.scheduler.ready.wait()
        if self.scheduler.startup_error:
            error = self.scheduler.startup_error
            self.close()
            raise RuntimeError(f"the pipeline did not start: {error}")
        self._spawn(self._client_loop, address)
        return self

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Stop every worker and the scheduler; pending requests fail."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        if self._data_server is not None:
            self._data_server.close()
            self._data_server = None
        for handle in list(self._pending.values()):
            if not handle.done():
                handle.set_exception(RequestError(handle.request_id, "scheduler", "internal", "pipeline closed"))
            handle._stream.put(None)
        self._pending.clear()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self.scheduler = None

    def __enter__(self) -> "Pipeline":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- requests -----------------------------------------------------------------------------

    def submit(self, video: Any, prompt: str, *, image: Any = None, document: str | None = None,
               stream: bool = False, timeout_s: float | None = None, video_options: dict | None = None,
               request_id: str | None = None, **sampling) -> RequestHandle:
        """Queue a request; returns a future of `RunResult` (raises `RequestError` on failure).

        Args:
            video: a path, encoded bytes, uint8 frames `[T, H, W, 3]` (array or list), or None.
            prompt: the question.
            image: instead of a video, one image: a path, encoded bytes or uint8 RGB `[H, W, 3]`.
            document: optional text placed before the question as context.
            sampling: overrides of decode.* (max_new_tokens, temperature, top_p, top_k, seed, stop_strings...).
        """
        if video is not None and image is not None:
            raise ValueError("pass a video or an image, not both (one media item per request)")
        if not self._threads:
            self.start()
        request_id = request_id or uuid.uuid4().hex[:16]
        handle = RequestHandle(request_id, self)
        self._pending[request_id] = handle
        media, media_type = (image, "image") if image is not None else (video, "video")
        fields = _media_message(media, media_type, request_id, self.config.runtime.shm_dir)
        self._outbox.put(SubmitReq(request_id=request_id, prompt=prompt, sampling=dict(sampling),
                                   video_options=dict(video_options or {}), timeout_s=timeout_s, stream=stream,
                                   document=document, **fields))
        return handle

    def run(self, video: Any, prompt: str, **kwargs) -> RunResult:
        """Answer one question about one video (path, bytes, frames, or None for text only)."""
        return self.submit(video, prompt, **kwargs).result()

    def stream(self, video: Any, prompt: str, **kwargs) -> Iterator[str]:
        """Yield the answer's text as it is generated; raises RequestError at the end on failure."""
        handle = self.submit(video, prompt, stream=True, **kwargs)
        yield from handle.tokens()
        handle.result()

    def status(self, timeout_s: float = 10.0) -> StatusOutput:
        handle = RequestHandle(f"status-{uuid.uuid4().hex[:8]}", self)
        self._pending[handle.request_id] = handle
        self._outbox.put(StatusReq(handle.request_id))
        return handle.result(timeout=timeout_s)

    # ----- client socket (one thread owns it) ---------------------------------------------------

    def _client_loop(self, address: str) -> None:
        from spava.comm.security import resolve_secret, secure_client

        context = zmq.Context()
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.IDENTITY, f"client-{uuid.uuid4().hex[:8]}".encode())
        socket.setsockopt(zmq.LINGER, 0)
        secure_client(socket, resolve_secret(self.config.runtime.secret))
        socket.connect(address)
        try:
            while not self._stop.is_set():
                while not self._outbox.empty():
                    socket.send(encode_message(self._outbox.get()))
                if socket.poll(5):
                    self._on_message(socket.recv())
        finally:
            socket.close()
            context.term()

    def _on_message(self, data: bytes) -> None:
        try:
            message = decode_message(data)
        except MessageError:
            return
        handle = self._pending.get(message.request_id)
        if handle is None:
            return
        if isinstance(message, TokenOutput):
            handle._stream.put(message.text)
            return
        self._pending.pop(message.request_id, None)
        handle._stream.put(None)
        if isinstance(message, ErrorOutput):
            handle.set_exception(RequestError(message.request_id, message.stage, message.kind, message.message))
        elif isinstance(message, ResultOutput):
            handle.set_result(RunResult(**vars(message)))
        elif isinstance(message, StatusOutput):
            handle.set_result(message)
