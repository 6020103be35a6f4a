"""`video` stage: decode and sample frames (PyAV by default), after a budget check on metadata.

Input `VideoTaskReq` (a path, encoded bytes or raw frames in shared memory, plus the resolved
video.* options); output `VideoTaskOutput` with the sampled `[T, H, W, 3]` uint8 frames in shared
memory. The visual-token budget is checked from probed metadata before any frame is decoded, so an
oversized request fails in milliseconds with the estimate and the setting to change.
"""

from __future__ import annotations

import time

import torch

from spava.comm.messages import VideoTaskOutput, VideoTaskReq
from spava.comm.transport import read_shared, read_shared_bytes, write_shared
from spava.stages.base import BadInputError, Stage, StageContext

SAMPLING_KEYS = ("fps", "num_frames", "min_frames", "max_frames", "start_time", "end_time", "min_pixels", "max_pixels")


def frame_sampling(options: dict):
    from spava.media.sampling import FrameSampling

    try:
        return FrameSampling(**{key: options[key] for key in SAMPLING_KEYS if key in options})
    except ValueError as error:
        raise BadInputError(f"video sampling: {error}") from None


def estimate_visual_tokens(num_frames: int, height: int, width: int, options: dict) -> tuple[int, tuple[int, int, int]]:
    """LLM tokens a video of `num_frames` frames of `height x width` will take, and its grid."""
    from spava.models.qwen2_5_vl.processing import QwenProcessorConfig, get_grid_thw

    config = QwenProcessorConfig(min_pixels=options["min_pixels"], max_pixels=options["max_pixels"])
    grid = get_grid_thw(num_frames, height, width, config)
    return grid[0] * grid[1] * grid[2] // (config.merge_size ** 2), grid


def check_budget(num_frames: int, height: int, width: int, options: dict) -> None:
    num_tokens, grid = estimate_visual_tokens(num_frames, height, width, options)
    budget = options["max_visual_tokens"]
    if num_tokens > budget:
        raise BadInputError(
            f"this video would take {num_tokens} visual tokens ({num_frames} frames of {width}x{height}, "
            f"grid {grid}), over layout.max_visual_tokens={budget}; lower video.max_frames / video.fps / "
            "video.max_pixels, or raise layout.max_visual_tokens"
        )


class VideoDecoder(Stage):
    name = "video"

    def __init__(self, context: StageContext, backend: str = "auto"):
        self.context = context
        self.backend = backend

    @classmethod
    def from_config(cls, config, context: StageContext) -> "VideoDecoder":
        return cls(context, backend=config.video.backend)

    def _source(self, task: VideoTaskReq):
        if task.video_kind == "path":
            return task.video_path
        if task.video_kind == "bytes":
            return read_shared_bytes(task.video_ref)
        if task.video_kind == "frames":
            return read_shared(task.video_ref).numpy()
        raise BadInputError(f"unknown video kind {task.video_kind!r}")

    def process(self, task: VideoTaskReq) -> VideoTaskOutput:
        from spava.media.sampling import plan_frame_sampling
        from spava.media.video import VideoDecodeError, decode_video, probe_video

        start = time.perf_counter()
        if task.video_kind == "none":
            return VideoTaskOutput(task.request_id, None, [], 0.0, 0, 0.0)
        sampling = frame_sampling(task.options)
        source = self._source(task)
        try:
            info = probe_video(source)
            plan = plan_frame_sampling(info.num_frames, info.fps, sampling)
            check_budget(plan.num_frames, info.height, info.width, task.options)
            decoded = decode_video(source, sampling, backend=self.backend)
        except (VideoDecodeError, ValueError) as error:
            if isinstance(error, BadInputError):
                raise
            raise BadInputError(f"video: {error}") from None
        frames = write_shared(torch.from_numpy(decoded.frames), self.context.shm_dir,
                              task.request_id, "frames")
        return VideoTaskOutput(
            request_id=task.request_id, frames=frames, timestamps=list(decoded.timestamps),
            second_per_grid=float(decoded.plan.second_per_grid), num_source_frames=decoded.num_source_frames,
            seconds=time.perf_counter() - start,
        )
