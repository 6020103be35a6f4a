"""CPU preprocessing of a video's sampled frames: the old float32-rows path against spava's path now.

    python examples/bench_preprocess_cpu.py --video clip_720p.mp4 --frames 64

Both start from the same decoded uint8 frames (PyAV, `--frames` sampled uniformly) and use the CPU
demo's pixel bounds (video.min_pixels / max_pixels defaults):

* float32 rows: what the layout stage did before frames went to the model ranks as uint8: Pillow
  bicubic resize, patchify, normalise to float32 `[P, 1176]`, written to shared memory (and read
  back by a model rank);
* uint8 frames: what runs now: the frames written once to shared memory as uint8, read by the model
  rank, resized with torch's uint8 bicubic-antialias kernel, patchified and normalised there.

Prints the median of `--repeats` runs (after one warm-up) of each: wall seconds, and CPU seconds of
this process (all its threads; steadier than wall time on a busy machine), with torch's thread count
and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch


def _median_seconds(fn, repeats: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process) over `repeats` runs after a warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    from spava.comm.transport import create_shared_frames, read_frames, read_shared, unlink_shared, write_shared
    from spava.config import VideoConfig
    from spava.media.sampling import FrameSampling
    from spava.media.video import decode_video
    from spava.models.qwen2_5_vl.family import make_vision_spec
    from spava.models.qwen2_5_vl.presets import vision_preset
    from spava.models.qwen2_5_vl.processing import QwenProcessorConfig, preprocess_video

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", required=True)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    video = VideoConfig()
    frames = torch.from_numpy(decode_video(args.video, FrameSampling(fps=None, num_frames=args.frames)).frames)
    spec = make_vision_spec(vision_preset("tiny"))
    plan = spec.plan(frames.shape[0], frames.shape[1], frames.shape[2], video.min_pixels, video.max_pixels)
    directory = tempfile.mkdtemp(dir="/dev/shm", prefix="spava-bench-")

    def float_rows() -> None:
        rows, _ = preprocess_video(frames, QwenProcessorConfig(min_pixels=video.min_pixels,
                                                               max_pixels=video.max_pixels))
        ref = write_shared(rows, directory, "bench", "pixels")
        read_shared(ref).sum()  # a model rank reads every row
        unlink_shared(ref)

    def uint8_frames() -> None:
        ref, array = create_shared_frames(directory, "bench", *frames.shape[:3])
        array[:] = frames.numpy()
        del array
        rows = spec.preprocess(read_frames(ref.path, ref.shape, 0, frames.shape[0]), plan.resized_hw)
        rows.sum()
        unlink_shared(ref)

    print(f"{frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[1]} -> {plan.resized_hw[1]}x"
          f"{plan.resized_hw[0]}, grid {plan.grid_thw}, {plan.num_tokens} tokens; torch threads "
          f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")
    for name, fn in (("float32 rows (Pillow, layout stage)", float_rows), ("uint8 frames (torch, model rank)",
                                                                          uint8_frames)):
        wall, cpu = _median_seconds(fn, args.repeats)
        print(f"  {name:<38} {wall:.3f} s wall, {cpu:.3f} s CPU")


if __name__ == "__main__":
    main()
