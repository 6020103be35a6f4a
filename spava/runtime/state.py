"""Bookkeeping of the scheduler: requests and workers (no sockets, no tensors)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from spava.comm.messages import LayoutTaskOutput, ModelTaskOutput, SubmitReq, TensorRef, VideoPlanOutput
from spava.runtime.launch import WorkerSpec

STAGES = ("video", "layout", "model")


@dataclass
class Request:
    """One request from admission to its result or error."""

    submit: SubmitReq
    client: bytes  # ZMQ identity of the client that submitted it
    deadline: float
    options: dict  # resolved video.* + layout budget options
    sampling: dict
    stage: str = "video_queue"  # {video,layout,model}_queue -> {video,layout,model} -> done
    created: float = field(default_factory=time.monotonic)
    stage_started: float = field(default_factory=time.monotonic)
    timings: dict[str, float] = field(default_factory=dict)
    refs: list[TensorRef] = field(default_factory=list)  # shared-memory files it owns
    video: Optional[VideoPlanOutput] = None  # the planned visual items (their frames may still decode)
    video_worker_id: Optional[str] = None  # the video worker while it decodes this request's frames
    is_video_done: bool = False  # every frame decoded (or no video)
    layout: Optional[LayoutTaskOutput] = None
    worker_id: Optional[str] = None
    model_outputs: dict[str, ModelTaskOutput] = field(default_factory=dict)
    is_cancelled: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return sum(item.frames.shape[0] for item in self.video.items) if self.video is not None else 0

    def progress_paths(self) -> list[str]:
        """The progress files of frames that may still be streaming in."""
        return [item.progress for item in self.video.items if item.progress] if self.video is not None else []

    @property
    def request_id(self) -> str:
        return self.submit.request_id

    def enter(self, stage: str) -> None:
        """Record the wall time of the stage (or queue) being left, as timings["<stage>_s"]."""
        now = time.monotonic()
        key = f"{self.stage}_s"
        self.timings[key] = self.timings.get(key, 0.0) + now - self.stage_started
        self.stage, self.stage_started = stage, now


@dataclass
class WorkerState:
    """What the scheduler knows about one worker process."""

    spec: WorkerSpec
    is_ready: bool = False
    last_seen: float = field(default_factory=time.monotonic)
    request_id: Optional[str] = None
    num_restarts: int = 0
    device: str = ""
    host: str = ""

    @property
    def is_idle(self) -> bool:
        return self.is_ready and self.request_id is None
