"""`video` stage: probe, plan and budget-check a video (or image), then decode its frames into shared memory.

Input `VideoTaskReq` (a path, encoded bytes or raw frames in shared memory, the request's resolved
`VideoOptions` and whether the item is a video or an image). The stage:

1. probes the source and plans the sampled frames (`spava.media.sampling`) and their grid (the
   model family's `VisionSpec`) from metadata, and rejects an item over `layout.max_visual_tokens`
   before decoding anything, naming the estimate and the setting to change;
2. creates the frames file `[T, H, W, 3]` uint8 and its progress file, and sends `VideoPlanOutput`
   at once, so the layout and model stages start while frames decode;
3. decodes the frames into the file, marking each one written (`FrameProgress`), and returns
   `VideoTaskOutput` with the decode time and any warnings.

Images are decoded and resized here with Pillow (HF's image-processor path; the family's
`VisionSpec.image_frames`, e.g. one frame per tile) and sent complete.
Files created before the plan is sent are removed on failure; after it, the scheduler owns them.
"""

from __future__ import annotations

import time

import numpy as np

from spava.comm.messages import VideoOptions, VideoPlanOutput, VideoTaskOutput, VideoTaskReq, VisualItem
from spava.comm.transport import (PROGRESS_FAILED, FrameProgress, create_shared_frames, new_ref_path, read_shared,
                                  read_shared_bytes, unlink_shared)
from spava.media.images import ImageDecodeError, load_image
from spava.media.sampling import FrameSampling, effective_max_pixels
from spava.media.video import DecodeCancelled, VideoDecodeError, decode_video_into, plan_video_sampling, probe_video
from spava.models.family import get_family
from spava.stages.base import BadInputError, Stage, StageContext

def frame_sampling(options: VideoOptions) -> FrameSampling:
    """The request's frame sampling (checked at admission already; a user stage may skip that)."""
    try:
        return FrameSampling.from_settings(options)
    except ValueError as error:
        raise BadInputError(f"video sampling: {error}") from None


def check_budget(num_tokens: int, grid, what: str, max_visual_tokens: int) -> None:
    if num_tokens > max_visual_tokens:
        raise BadInputError(
            f"this {what} would take {num_tokens} visual tokens (grid {tuple(grid)}), over "
            f"layout.max_visual_tokens={max_visual_tokens}; lower video.max_frames / video.fps / "
            "video.max_pixels, or raise layout.max_visual_tokens"
        )


class VideoDecoder(Stage):
    name = "video"

    def __init__(self, context: StageContext, vision_spec, max_visual_tokens: int, backend: str = "auto",
                 num_decoders: int = 0):
        self.context = context
        self.vision_spec = vision_spec
        self.max_visual_tokens = max_visual_tokens  # layout.max_visual_tokens: larger items are refused here
        self.backend = backend
        self.num_decoders = num_decoders  # parallel decoders per video (0: from the cores and the plan)

    @classmethod
    def from_config(cls, config, context: StageContext) -> "VideoDecoder":
        return cls(context, get_family(config.model).vision_spec(), config.layout.max_visual_tokens,
                   backend=config.video.backend, num_decoders=config.video.num_decoders)

    def _source(self, task: VideoTaskReq):
        if task.video_kind == "path":
            return task.video_path
        if task.video_kind == "bytes":
            return read_shared_bytes(task.video_ref)
        if task.video_kind == "frames":
            return read_shared(task.video_ref).numpy()
        raise BadInputError(f"unknown video kind {task.video_kind!r}")

    def process(self, task: VideoTaskReq) -> VideoTaskOutput:
        if task.video_kind == "none":
            return VideoTaskOutput(task.request_id, 0, 0.0)
        if self.vision_spec is None:
            raise BadInputError("this model has no vision encoder; ask about a document instead of a video or image")
        if task.media_type == "image":
            return self._image(task)
        return self._video(task)

    # ----- videos ------------------------------------------------------------------------------

    def _video(self, task: VideoTaskReq) -> VideoTaskOutput:
        start = time.perf_counter()
        sampling = frame_sampling(task.options)
        source = self._source(task)
        try:
            info = probe_video(source)
            plan = plan_video_sampling(info, sampling)
            max_pixels = effective_max_pixels(plan.num_frames, sampling.min_pixels, sampling.max_pixels,
                                              sampling.total_pixels, self.vision_spec.temporal_patch_size)
            visual = self.vision_spec.plan(plan.num_frames, info.height, info.width, sampling.min_pixels, max_pixels)
        except VideoDecodeError as error:
            raise BadInputError(str(error)) from None
        except ValueError as error:
            raise BadInputError(f"video sampling: {error}") from None
        check_budget(visual.num_tokens, visual.grid_thw, f"video ({plan.num_frames} frames of "
                     f"{info.width}x{info.height})", self.max_visual_tokens)
        frames_ref, array = create_shared_frames(self.context.shm_dir, task.request_id, plan.num_frames,
                                                 info.height, info.width)
        progress_path = new_ref_path(self.context.shm_dir, task.request_id, "progress")
        try:
            progress = FrameProgress.create(progress_path, plan.num_frames)
        except OSError:
            unlink_shared(frames_ref)
            raise
        item = VisualItem("video", frames_ref, progress_path, list(visual.grid_thw), list(visual.resized_hw),
                          list(plan.timestamps), float(plan.second_per_grid))
        self.context.send(VideoPlanOutput(task.request_id, [item], time.perf_counter() - start))
        decode_start = time.perf_counter()
        try:
            warnings = self._decode_into(source, info, plan, array, progress, task.options.min_decoded_fraction)
            progress.finish(is_ok=True)
        except Exception:
            progress.finish(is_ok=False)
            raise
        finally:
            progress.close()
            del array
        for warning in warnings:
            self.context.logger.warning("request %s: %s", task.request_id, warning)
        return VideoTaskOutput(task.request_id, plan.num_frames, time.perf_counter() - decode_start, warnings)

    def _decode_into(self, source, info, plan, array: np.ndarray, progress: FrameProgress,
                     min_decoded_fraction: float) -> list[str]:
        """Decode the planned frames into `array` with parallel decoders, marking each frame in
        `progress` as it lands (the model ranks start on them); returns the decoder's warnings.

        The decoders stop as soon as the stream is marked failed: the scheduler does that when the
        request ends early (cancelled, timed out, failed elsewhere), so no socket is polled here.
        """
        try:
            report = decode_video_into(source, plan, array, info=info, num_workers=self.num_decoders,
                                       on_frames=progress.mark, backend=self.backend,
                                       should_stop=lambda: progress.status() == PROGRESS_FAILED,
                                       min_decoded_fraction=min_decoded_fraction)
        except DecodeCancelled:
            raise BadInputError("the request ended while its video was decoding") from None
        except VideoDecodeError as error:
            raise BadInputError(str(error)) from None
        return list(report.warnings)

    # ----- images ------------------------------------------------------------------------------

    def _image(self, task: VideoTaskReq) -> VideoTaskOutput:
        start = time.perf_counter()
        try:
            image = load_image(self._source(task))
        except ImageDecodeError as error:
            raise BadInputError(str(error)) from None
        height, width = image.shape[:2]
        spec = self.vision_spec
        try:
            visual = spec.plan_image(height, width)
        except ValueError as error:
            raise BadInputError(f"image: {error}") from None
        check_budget(visual.num_tokens, visual.grid_thw, f"image ({width}x{height})", self.max_visual_tokens)
        frames = spec.image_frames(image, visual)  # [T, h, w, 3]: the resized image, or its tiles
        frames_ref, array = create_shared_frames(self.context.shm_dir, task.request_id, *frames.shape[:3])
        array[:] = frames
        del array
        item = VisualItem("image", frames_ref, None, list(visual.grid_thw),
                          list(visual.resized_hw), [0.0] * len(frames), 0.0)
        seconds = time.perf_counter() - start
        self.context.send(VideoPlanOutput(task.request_id, [item], seconds))
        return VideoTaskOutput(task.request_id, 1, 0.0)
