"""Bookkeeping of the scheduler: requests and workers (no sockets, no tensors)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from spava.comm.messages import LayoutTaskOutput, ModelTaskOutput, SubmitReq, TensorRef, VideoOptions, VideoPlanOutput
from spava.runtime.launch import WorkerSpec

STAGES = ("video", "layout", "model")


@dataclass
class Request:
    """One request from admission to its result or error."""

    submit: SubmitReq
    client: bytes  # ZMQ identity of the client that submitted it
    deadline: float
    options: VideoOptions  # the request's resolved video settings
    sampling: dict  # its checked overrides of decode.*
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
    frames_done: set[str] = field(default_factory=set)  # model workers that will not read the frames again
    is_frames_freed: bool = False
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


WORKER_PHASES = ("starting", "ready", "restarting", "dead")


@dataclass
class WorkerState:
    """What the scheduler knows about one worker process.

    `phase`: starting (first start, not ready yet) -> ready; after a death restarting (started
    again, not ready yet) or dead (not running: its restart budget is spent for now, or its node is
    lost). `since` is when the phase began; `last_seen` the last heartbeat or message.
    """

    spec: WorkerSpec
    phase: str = "starting"
    since: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    request_id: Optional[str] = None
    device: str = ""
    host: str = ""
    problem: str = ""  # why it died last

    @property
    def is_ready(self) -> bool:
        return self.phase == "ready"

    @property
    def is_idle(self) -> bool:
        return self.is_ready and self.request_id is None

    def enter(self, phase: str, now: float | None = None) -> None:
        assert phase in WORKER_PHASES, phase
        self.phase, self.since = phase, time.monotonic() if now is None else now
        if phase in ("starting", "restarting"):
            self.request_id, self.last_seen = None, self.since
        elif phase == "dead":
            self.request_id = None

    def status_word(self) -> str:
        """What `status()` reports: busy | idle | starting | restarting | dead."""
        if self.phase == "ready":
            return "busy" if self.request_id else "idle"
        return self.phase


def item_refs(item) -> list[TensorRef]:
    """The shared-memory files of one visual item: its frames and, while they stream, its progress file."""
    refs = [item.frames]
    if item.progress:
        refs.append(TensorRef(path=item.progress, shape=[0], dtype="uint8"))
    return refs
