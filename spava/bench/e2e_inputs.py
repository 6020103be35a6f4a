"""What the end-to-end benchmark's baselines need of a video file: its frame plan, grid and frames.

The same probe, frame-sampling plan and grid as the pipeline's video stage (`spava.media` and the
model family's `VisionSpec`), so the decoded-input and HF measurements see exactly the frames and
tokens the pipeline saw.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from spava.media.sampling import FrameSampling, effective_max_pixels
from spava.models.family import get_family


@dataclass(frozen=True)
class VideoPlan:
    """One file under one config: the sampled frames and the grid they make."""

    num_frames: int
    height: int
    width: int
    resized_hw: tuple[int, int]
    grid_thw: tuple[int, int, int]
    max_pixels: int  # the per-frame cap after the pixel budget
    second_per_grid: float
    duration_s: float


def frame_sampling_of(config):
    """The config's `video` section as a `FrameSampling`."""
    names = {field.name for field in dataclasses.fields(FrameSampling)}
    return FrameSampling(**{f.name: getattr(config.video, f.name) for f in dataclasses.fields(config.video)
                            if f.name in names})


def plan_video(config, path: str) -> VideoPlan:
    """Probe `path` and plan its frames and grid as the pipeline does."""
    from spava.media.video import plan_video_sampling, probe_video

    sampling, spec = frame_sampling_of(config), get_family(config.model).vision_spec()
    info = probe_video(path)
    plan = plan_video_sampling(info, sampling)
    max_pixels = effective_max_pixels(plan.num_frames, sampling.min_pixels, sampling.max_pixels, sampling.total_pixels,
                                      spec.temporal_patch_size)
    visual = spec.plan(plan.num_frames, info.height, info.width, sampling.min_pixels, max_pixels)
    return VideoPlan(plan.num_frames, info.height, info.width, visual.resized_hw, visual.grid_thw,
                     int(max_pixels), plan.second_per_grid, info.duration)
