"""Bookkeeping of the scheduler: requests and workers (no sockets, no tensors)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from spava.comm.messages import LayoutTaskOutput, ModelTaskOutput, SubmitReq, TensorRef, VideoTaskOutput
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
    refs: list[TensorRef] = field(default_factory=list)
    video: Optional[VideoTaskOutput] = None
    layout: Optional[LayoutTaskOutput] = None
    worker_id: Optional[str] = None
    model_outputs: dict[str, ModelTaskOutput] = field(default_factory=dict)
    is_cancelled: bool = False

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
