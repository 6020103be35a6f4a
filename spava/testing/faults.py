"""Fault-injecting stages, for testing a deployment's failure handling.

Set `SPAVA_FAULT_DIR` in the environment of the process that starts the pipeline (workers inherit
it) and use these classes in YAML (`stages.layout: spava.testing.faults:FaultyLayout`, ...). A fault
is armed by creating a flag file in that directory; the first stage process that sees it consumes it:

  <stage>-crash          the worker process exits at once (os._exit) in the middle of a task
  layout-crash-late      the layout worker exits after writing its outputs, before announcing them
  <stage>-sleep          the task sleeps N seconds first (N = the file's content, default 5)
  video-slow-frames      the next video's frames arrive N seconds apart (default 0.2): a slow decoder
  prefill-crash-rank<R>  prefill rank R exits mid-request
  encode-batch-fail      the vision-tower call of the next batch of several requests raises
                         (an encoder rank's `EncodeBatchReq`; one request alone is not affected)

where <stage> is video, layout or prefill.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from spava.stages.encode import VisionEncoder
from spava.stages.layout import LayoutPlanner
from spava.stages.prefill import PrefillWorker
from spava.stages.video import VideoDecoder

FAULT_DIR_ENV = "SPAVA_FAULT_DIR"


def take_fault(name: str) -> str | None:
    """If flag file `name` exists, remove it and return its content; else None."""
    directory = os.environ.get(FAULT_DIR_ENV)
    if not directory:
        return None
    path = Path(directory) / name
    try:
        content = path.read_text()
        path.unlink()
    except FileNotFoundError:
        return None
    return content


def arm_fault(directory: str | os.PathLike, name: str, content: str = "") -> None:
    Path(directory, name).write_text(content)


def _apply(stage_name: str) -> None:
    if take_fault(f"{stage_name}-crash") is not None:
        os._exit(17)
    seconds = take_fault(f"{stage_name}-sleep")
    if seconds is not None:
        time.sleep(float(seconds or 5))


class _SlowProgress:
    """A frames progress file whose frames are marked `delay_s` seconds apart (a slow decoder)."""

    def __init__(self, progress, delay_s: float):
        self.progress, self.delay_s = progress, delay_s

    def mark(self, first: int, stop: int) -> None:
        time.sleep(self.delay_s * (stop - first))
        self.progress.mark(first, stop)

    def __getattr__(self, name):
        return getattr(self.progress, name)


class FaultyVideo(VideoDecoder):
    def process(self, task):
        _apply("video")
        return super().process(task)

    def _decode_into(self, source, info, plan, array, progress, min_decoded_fraction):
        delay = take_fault("video-slow-frames")
        if delay is not None:
            progress = _SlowProgress(progress, float(delay or 0.2))
        return super()._decode_into(source, info, plan, array, progress, min_decoded_fraction)


class FaultyLayout(LayoutPlanner):
    def process(self, task):
        _apply("layout")
        output = super().process(task)
        if take_fault("layout-crash-late") is not None:  # its files exist, the scheduler never hears of them
            os._exit(17)
        return output


class FaultyPrefill(PrefillWorker):
    def process(self, task):
        _apply("prefill")
        if take_fault(f"prefill-crash-rank{self.runner.comm.rank}") is not None:
            os._exit(17)
        return super().process(task)


def _failing_tower(pixel_rows, grid_thw):
    raise RuntimeError("injected vision-tower failure (encode-batch-fail)")


class FaultyEncoder(VisionEncoder):
    def process_batch(self, batch):
        if take_fault("encode-batch-fail") is None:
            return super().process_batch(batch)
        self.adapter.encode = _failing_tower  # shadows the adapter's method for this batch only
        try:
            return super().process_batch(batch)
        finally:
            del self.adapter.encode
