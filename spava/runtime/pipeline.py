"""`Pipeline`: the Python API. It starts the scheduler (a thread here) and the workers, submits
requests over ZMQ and resolves their futures. It owns no model.

    with Pipeline.from_yaml("configs/demo_cpu.yaml") as pipe:
        result = pipe.run("video.mp4", "What happens in this video?", max_new_tokens=64)
        print(result.text, result.timings)

Lifecycle: `start()` (or the first `submit`, or `with`) starts it; `close()` stops every worker,
fails the requests still pending (kind "cancelled"), unlinks every shared-memory file of the
pipeline and removes its temp folder. A closed pipeline refuses `submit` / `run` / `stream` with a
RuntimeError; `start()` (or a new `with` block) starts it again from scratch. Before it starts, a
pipeline removes what pipelines killed with SIGKILL left on this host (`spava.comm.shm`). Started
in the main thread of a process that left SIGTERM at its default, it turns SIGTERM into SystemExit
so that `with` blocks and exit handlers clean up (what `timeout`, `kill`, docker and systemd send).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

from spava.comm.data_server import DataServer
from spava.comm.messages import StatusOutput, StatusReq, SubmitReq
from spava.comm.security import resolve_secret
from spava.comm.shm import (new_pipeline_id, owner_prefix, owner_tag, sweep_orphans, sweep_owner, write_shared_array,
                            write_shared_bytes)
from spava.config import PipelineConfig, config_hash, config_to_yaml, load_config
from spava.models.family import get_family
from spava.runtime.client import ClientConnection, RequestError, RequestHandle, RunResult  # noqa: F401 - public
from spava.runtime.nodes import HeadNode
from spava.runtime.launch import LocalLauncher, local_specs, preload_modules, use_fork_server
from spava.runtime.scheduler import Scheduler

logger = logging.getLogger("spava.pipeline")
URL_SCHEMES = ("http://", "https://")


def _media_message(media: Any, media_type: str, request_id: str, shm_dir: str, owner: str) -> dict:
    """Turn a path / bytes / frames (or an image array) / None into SubmitReq media fields (data goes to
    shared memory, owned by `owner` until the scheduler adopts it)."""
    if media is None:
        return dict(video_kind="none")
    if isinstance(media, (str, os.PathLike)):
        path = os.fspath(media)
        if isinstance(path, str) and path.lower().startswith(URL_SCHEMES):
            raise ValueError(f"{media_type} {path!r} is a URL: Pipeline.submit takes a local path, bytes or frames; "
                             "download it first (`spava run --video URL` and `spava serve` fetch URLs themselves)")
        return dict(video_kind="path", video_path=os.path.abspath(path), media_type=media_type)
    if isinstance(media, (bytes, bytearray, memoryview)):
        return dict(video_kind="bytes", media_type=media_type,
                    video_ref=write_shared_bytes(bytes(media), shm_dir, request_id, media_type, owner))
    import numpy as np

    frames = np.stack([np.asarray(f) for f in media]) if isinstance(media, list) else np.asarray(media)
    if media_type == "image" and frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError("video frames must be uint8 RGB [T, H, W, 3] (an array or a list of [H, W, 3] arrays); "
                         "an image array uint8 RGB [H, W, 3]")
    return dict(video_kind="frames", media_type=media_type,
                video_ref=write_shared_array(frames, shm_dir, request_id, media_type, owner))


def _raise_system_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _signals_held():
    """SIGINT / SIGTERM ignored while a pipeline tears down (main thread only): a second Ctrl-C must
    not leave workers or shared memory half cleaned. Teardown is bounded (joins have timeouts)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Pipeline:
    """Runs a YAML-defined spava pipeline; see the module docstring."""

    def __init__(self, config: PipelineConfig, *, is_quiet: bool = False, log_path: str | None = None,
                 head: HeadNode | None = None):
        """`head`: this process is the head (global rank 0) of a world that torchrun or the deepspeed
        launcher started (`python -m spava.runtime.node`): it starts the video and layout workers and
        `head.model_ranks` only; the launcher's other processes are the other model ranks."""
        self.config = config
        self.head = head
        self.is_quiet = is_quiet
        self.log_path = log_path
        self.control_address: str | None = None
        self.scheduler = None
        self._connect_address: str | None = None
        self._state = "new"  # new -> running -> closed (-> running again on start())
        self._lifecycle = threading.RLock()
        self._connection: ClientConnection | None = None
        self._scheduler_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._tmp: str | None = None
        self._owner: str | None = None
        self._data_server = None
        self._launcher = None
        self._has_sigterm_handler = False

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = (), **kwargs) -> "Pipeline":
        return cls(load_config(path, overrides), **kwargs)

    @classmethod
    def from_config(cls, config: PipelineConfig, **kwargs) -> "Pipeline":
        return cls(config, **kwargs)

    @classmethod
    def connect(cls, address: str, config: PipelineConfig | None = None, *, secret: str | None = None) -> "Pipeline":
        """A client of a pipeline already served elsewhere (`spava launch`), at its control address.
        `start()` (or the first request) raises ConnectionError if nothing answers there."""
        pipeline = cls(config or load_config())
        if secret is not None:
            pipeline.config.runtime.secret = secret
        pipeline._connect_address = address
        return pipeline

    # ----- lifecycle ----------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._state == "running"

    def start(self) -> "Pipeline":
        """Start the scheduler and every worker (or connect); returns once all workers said ready.

        A closed pipeline starts again from scratch. On failure everything started is stopped again.
        """
        with self._lifecycle:
            if self._state == "running":
                return self
            self._stop = threading.Event()
            self._owner = owner_tag(new_pipeline_id())
            try:
                if self._connect_address is not None:
                    self._open_connection(self._connect_address, check=None)
                else:
                    self._start_local()
            except BaseException:
                with _signals_held():
                    self._teardown()
                raise
            self._state = "running"
            self._install_sigterm()
            atexit.register(self._close_at_exit)
        return self

    def _start_local(self) -> None:
        runtime = self.config.runtime
        removed = sweep_orphans(runtime.shm_dir, tempfile.gettempdir())
        if removed:
            logger.warning("removed %d file(s) / folder(s) left by dead spava pipelines: %s", len(removed),
                           ", ".join(removed[:5]) + (" ..." if len(removed) > 5 else ""))
        get_family(self.config.model).prepare()  # e.g. convert a GGUF once, before any worker loads it
        self._tmp = tempfile.mkdtemp(prefix=owner_prefix(self._owner))
        config_path = str(Path(self._tmp) / "pipeline.yaml")
        Path(config_path).write_text(config_to_yaml(self.config))
        address = runtime.control_address if runtime.control_address != "auto" else f"ipc://{self._tmp}/control"
        self.control_address = address
        secret = resolve_secret(runtime.secret)
        head = self.head
        launcher = LocalLauncher(config_path, address, secret=secret, is_quiet=self.is_quiet, log_path=self.log_path,
                                 owner=self._owner, fork_server=use_fork_server(self.config),
                                 preload=preload_modules(self.config), joins_launched_world=head is not None)
        self._launcher = launcher
        # model ranks on other nodes read complete files only (fetched from the data server)
        self.scheduler = Scheduler(self.config, address if head is None else head.control_bind, launcher,
                                   config_hash=config_hash(self.config), secret=secret,
                                   streams_frames=head is None or head.data_address is None, owner=self._owner)
        local = None if head is None else {spec.worker_id for spec in local_specs(self.config, head.model_ranks)}
        self.scheduler.start_workers(local)
        if head is not None and head.data_address is not None:
            self._data_server = DataServer(head.data_bind, runtime.shm_dir, secret)
        self._scheduler_thread = threading.Thread(target=self.scheduler.run, args=(self._stop,), daemon=True,
                                                  name="spava-scheduler")
        self._scheduler_thread.start()
        self.scheduler.ready.wait()
        if self.scheduler.startup_error:
            raise RuntimeError(f"the pipeline did not start: {self.scheduler.startup_error}")
        thread = self._scheduler_thread
        self._open_connection(address, check=lambda: None if thread.is_alive() else
                              "the scheduler thread stopped (see the log above)")

    def _open_connection(self, address: str, check) -> None:
        runtime = self.config.runtime
        self.control_address = address
        self._connection = ClientConnection(address, resolve_secret(runtime.secret),
                                            heartbeat_interval_s=runtime.heartbeat_interval_s,
                                            heartbeat_timeout_s=runtime.heartbeat_timeout_s, check=check)
        self._connection.open(runtime.connect_timeout_s)

    def close(self) -> None:
        """Stop every worker and the scheduler; pending requests fail (kind "cancelled"); every
        shared-memory file and the temp folder of the pipeline are removed. Safe to call twice."""
        with self._lifecycle:
            if self._state != "running":
                return
            self._state = "closed"
            with _signals_held():
                self._teardown()

    def _teardown(self) -> None:
        if self._connection is not None:
            self._connection.close("cancelled", "the pipeline was closed before this request finished")
        self._stop.set()
        if self._scheduler_thread is not None and self._scheduler_thread.ident is None:  # never started
            self._scheduler_thread = None
        if self._scheduler_thread is not None:
            self._scheduler_thread.join(timeout=60)
            self._scheduler_thread = None
        elif self.scheduler is not None:  # failed before its thread started
            self.scheduler.shutdown()
        elif self._launcher is not None:
            self._launcher.stop_all(grace_s=0.0)
        self._launcher = None
        if self._data_server is not None:
            self._data_server.close()
            self._data_server = None
        if self._owner is not None:
            sweep_owner(self.config.runtime.shm_dir, self._owner)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.scheduler = None
        self._uninstall_sigterm()
        atexit.unregister(self._close_at_exit)

    def _close_at_exit(self) -> None:
        self.close()

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_system_exit)
            self._has_sigterm_handler = True

    def _uninstall_sigterm(self) -> None:
        if self._has_sigterm_handler and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is _raise_system_exit:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._has_sigterm_handler = False

    def __enter__(self) -> "Pipeline":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _running_connection(self) -> ClientConnection:
        if self._state == "new":
            self.start()
        if self._state != "running" or self._connection is None:
            raise RuntimeError("the pipeline is closed; call start() (or use `with pipeline:`) to start it again")
        return self._connection

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
            request_id: optional; one in use by a pending request of this pipeline is a ValueError.
            sampling: overrides of decode.* (max_new_tokens, temperature, top_p, top_k, seed, stop_strings...).
        Raises ValueError (bad arguments, a duplicate request id) or RuntimeError (a closed pipeline)
        before anything is written to shared memory.
        """
        if video is not None and image is not None:
            raise ValueError("pass a video or an image, not both (one media item per request)")
        connection = self._running_connection()
        handle = RequestHandle(request_id or uuid.uuid4().hex[:16], connection)
        connection.register(handle)
        try:
            media, media_type = (image, "image") if image is not None else (video, "video")
            fields = _media_message(media, media_type, handle.request_id, self.config.runtime.shm_dir, self._owner)
        except BaseException:
            connection.unregister(handle.request_id)
            raise
        connection.submit(SubmitReq(request_id=handle.request_id, prompt=prompt, sampling=dict(sampling),
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
        connection = self._running_connection()
        handle = RequestHandle(f"status-{uuid.uuid4().hex[:8]}", connection)
        connection.register(handle)
        connection.send(StatusReq(handle.request_id))
        try:
            return handle.result(timeout=timeout_s)
        finally:
            connection.unregister(handle.request_id)
