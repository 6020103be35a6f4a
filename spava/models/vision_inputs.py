"""Where a rank gets the pixel rows of the vision units it encodes.

A request's visual items are split into encoding units (one temporal grid each, see
`vision_parallel.plan_vision_units`); each encoding rank asks a `VisualSource` for the rows of its
units. Two sources:

* `PixelRows`: pixel rows `[P, patch_dim]` made already (benchmarks, tests, HF-equality checks).
* `SharedFrames`: the request's uint8 frames in shared memory, streamed in by the video worker.
  The rank waits until a unit's frames are written (`FrameProgress`), reads just those frames,
  copies them to its device and preprocesses them there (`VisionSpec.preprocess`). So encoding
  starts on the first temporal grids while later frames still decode, and nothing but uint8 pixels
  crosses processes.

`ready_units` is what makes streaming safe on several ranks: it returns the units whose frames are
all written, and raises `FramesFailed` once the frames file is marked failed (a corrupt file, a
cancelled or timed-out request, a dead video worker). Every rank reads the same file, whose status
only moves once from running to done or failed, and `wait_complete` (called before any collective)
lets all ranks agree on it.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from spava.comm.transport import (PROGRESS_DONE, PROGRESS_FAILED, FrameProgress, local_ref_path, read_frames)
from spava.models.timing import StageTimer
from spava.models.vision_spec import VisionSpec

POLL_S = 0.001
DEFAULT_STALL_TIMEOUT_S = 300.0


class FramesFailed(RuntimeError):
    """The request's frames will never all arrive (decoding failed, or the request ended)."""


class VisualSource(ABC):
    """Pixel rows of vision units (global unit order: images first, then videos).

    `timer` (a `StageTimer`, set by the runner per request) receives `frames_wait_s` (waiting for
    frames to be decoded), `transfer_s` (reading them and copying them to the device) and
    `preprocess_s` (resize, patchify, normalise).
    """

    timer: StageTimer

    def wait_units(self, wanted: list[int]) -> list[int]:
        """Block until at least one unit of `wanted` is ready; return every ready one, sorted
        (complete inputs: all of them at once)."""
        return sorted(wanted)

    def wait_complete(self) -> None:
        """Block until every input is available; raise FramesFailed if they never will be."""

    @abstractmethod
    def rows(self, units: list, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Pixel rows `[sum of the units' patches, patch_dim]` of consecutive `units` of one item, on
        `device` (`units`: `VisionUnit`s)."""

    def close(self) -> None:
        """Release files and buffers."""


class PixelRows(VisualSource):
    """Rows made already: `pixel_values` `[P, patch_dim]` of every unit, in unit order."""

    def __init__(self, pixel_values: torch.Tensor):
        self.pixel_values = pixel_values
        self.timer = StageTimer()

    def rows(self, units: list, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        with self.timer.span("transfer_s"):
            return self.pixel_values[units[0].patch_start: units[-1].patch_stop].to(device)


@dataclass
class _Item:
    """One visual item backed by a frames file."""

    kind: str
    path: str
    shape: list[int]
    resized_hw: tuple[int, int]
    first_unit: int  # global index of its first unit
    num_units: int
    progress: FrameProgress | None
    is_copy: bool  # a private copy fetched from another node: unlink on close
    frames_per_unit: int

    def frame_range(self, unit: int) -> tuple[int, int]:
        """Frames `[start, stop)` of the item's local unit `unit` (the last may be short: it pads)."""
        start = unit * self.frames_per_unit
        return start, min(start + self.frames_per_unit, self.shape[0])


@dataclass
class SharedFrames(VisualSource):
    """Frames of every visual item in shared memory, preprocessed on the reading rank's device.

    Args:
        items: the request's `VisualItem`s (images first, then videos).
        spec: the family's `VisionSpec`.
        stall_timeout_s: give up when no new frame arrived for this long while decoding runs.
    """

    items: list
    spec: VisionSpec
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S
    timer: StageTimer = field(default_factory=StageTimer)

    def __post_init__(self) -> None:
        self._items: list[_Item] = []
        first = 0
        for item in self.items:
            path, is_copy = local_ref_path(item.frames)
            progress = FrameProgress.open(item.progress) if item.progress else None
            num_units = int(item.grid_thw[0])
            self._items.append(_Item(item.kind, path, list(item.frames.shape), tuple(item.resized_hw), first,
                                     num_units, progress, is_copy, self.spec.frames_per_unit))
            first += num_units

    # ----- readiness --------------------------------------------------------------------------

    def _item_of(self, unit: int) -> _Item:
        for item in self._items:
            if item.first_unit <= unit < item.first_unit + item.num_units:
                return item
        raise IndexError(f"unit {unit} is not in this request's {sum(i.num_units for i in self._items)} units")

    def _ready_in(self, item: _Item) -> set[int] | None:
        """Global units of `item` whose frames are written; None when all are (or the item is complete)."""
        if item.progress is None:
            return None
        status, flags = item.progress.ready()
        if status == PROGRESS_FAILED:
            raise FramesFailed("the video's frames failed to decode, or the request ended while they decoded")
        if status == PROGRESS_DONE:
            return None
        ready = set()
        for local in range(item.num_units):
            start, stop = item.frame_range(local)
            if all(flags[start:stop]):
                ready.add(item.first_unit + local)
        return ready

    def ready_units(self, wanted: list[int]) -> list[int]:
        ready_by_item = {id(item): self._ready_in(item) for item in self._items}
        result = []
        for unit in wanted:
            ready = ready_by_item[id(self._item_of(unit))]
            if ready is None or unit in ready:
                result.append(unit)
        return result

    def _num_written(self) -> int:
        return sum(sum(item.progress.ready()[1]) for item in self._items if item.progress is not None)

    def _poll(self, is_done) -> None:
        """Sleep-poll until `is_done()`; raise FramesFailed when no frame arrives for stall_timeout_s."""
        start = last_change = time.perf_counter()
        last_count = -1
        while not is_done():
            count, now = self._num_written(), time.perf_counter()
            if count != last_count:
                last_count, last_change = count, now
            elif now - last_change > self.stall_timeout_s:
                raise FramesFailed(f"no new frame was decoded for {self.stall_timeout_s:.0f} s")
            time.sleep(POLL_S)
        self.timer.add("frames_wait_s", time.perf_counter() - start)

    def wait_units(self, wanted: list[int]) -> list[int]:
        """Block until at least one unit of `wanted` is ready; return every ready one (sorted)."""
        ready: list[int] = []

        def has_ready() -> bool:
            ready[:] = self.ready_units(wanted)
            return bool(ready)

        self._poll(has_ready)
        return sorted(ready)

    def wait_complete(self) -> None:
        def is_complete() -> bool:
            statuses = [item.progress.status() for item in self._items if item.progress is not None]
            if PROGRESS_FAILED in statuses:
                raise FramesFailed("the video's frames failed to decode, or the request ended while they decoded")
            return all(status == PROGRESS_DONE for status in statuses)

        self._poll(is_complete)

    # ----- rows -------------------------------------------------------------------------------

    def _frames(self, item: _Item, first: int, stop: int, device: torch.device) -> torch.Tensor:
        """uint8 frames `[stop-first, H, W, 3]` of `item` on `device` (through pinned memory to a GPU:
        torch's pinned-memory cache keeps a buffer until its asynchronous copy is done)."""
        shape = (stop - first, *item.shape[1:])
        if device.type != "cuda":
            with self.timer.host_span("transfer_s"):
                return read_frames(item.path, item.shape, first, stop)
        with self.timer.host_span("transfer_s"):
            host = read_frames(item.path, item.shape, first, stop, torch.empty(shape, dtype=torch.uint8,
                                                                                pin_memory=True))
        with self.timer.span("transfer_s"):
            return host.to(device, non_blocking=True)

    def rows(self, units: list, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        item = self._item_of(units[0].index)
        if self._item_of(units[-1].index) is not item:
            raise ValueError("rows() takes consecutive units of one item")
        first_frame, _ = item.frame_range(units[0].index - item.first_unit)
        _, stop_frame = item.frame_range(units[-1].index - item.first_unit)
        frames = self._frames(item, first_frame, stop_frame, device)
        with self.timer.span("preprocess_s"):
            return self.spec.preprocess(frames, item.resized_hw, item.kind, dtype)

    def close(self) -> None:
        for item in self._items:
            if item.progress is not None:
                item.progress.close()
            if item.is_copy:
                try:
                    os.unlink(item.path)
                except FileNotFoundError:
                    pass
