"""The stage contract: every stage is one class with `from_config`, `setup`, `process`, `close`.

A stage runs inside a worker process (`spava.runtime.worker`). `process` takes one task message and
returns its output message; bad input raises `BadInputError` (the request fails with a clear
message, the worker keeps serving). Stages are named in YAML (`stages.video: pkg.mod:Class`), so a
user class that follows this contract replaces a built-in one.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from spava.objects import load_object


class BadInputError(ValueError):
    """The request's input is unusable; the message names what to change."""


@dataclass
class StageContext:
    """What a stage knows about the process it runs in."""

    worker_id: str
    rank: int
    device: str
    shm_dir: str
    logger: logging.Logger
    send: Callable[[Any], None] = field(default=lambda message: None)  # emit a message to the scheduler
    is_cancelled: Callable[[str], bool] = field(default=lambda request_id: False)
    placement: Any = None  # spava.plan.placement.Placement, for model ranks
    group: Any = None  # the prefill ranks' process group (None = the whole world), for model ranks
    is_quiet: bool = False  # no progress bars


@dataclass
class PrefillResult:
    """What the prefill stage hands the decode stage of the same model-rank process.

    task: the `ModelTaskReq`; inputs: its `PromptInputs`; state: the runner's `PrefillState` (KV
    cache, plan, last-token logits, timings); seconds: the prefill stage's wall time.
    """

    task: Any
    inputs: Any
    state: Any
    seconds: float


class Stage(ABC):
    """Base class of all stages."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, config, context: StageContext) -> "Stage":
        """Build the stage from the sections of the PipelineConfig it needs."""

    def setup(self) -> None:
        """Load models / open resources (called once, before the ready handshake)."""

    @abstractmethod
    def process(self, task: Any) -> Any:
        """Handle one task message; return the output message."""

    def close(self) -> None:
        """Release resources (called on shutdown)."""


def load_stage_class(target: str) -> type:
    """'pkg.module:Class' -> the Stage subclass."""
    cls = load_object(target, "stage")
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ValueError(f"{target} is not a subclass of spava.stages.base.Stage")
    return cls
