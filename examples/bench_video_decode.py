"""Time probe + decode of a sampled H.264 video for several numbers of parallel decoders.

Writes a synthetic H.264 file per resolution (cached in ``--cache-dir``; ~32 s at 24 fps by
default), samples ``--frames`` frames uniformly (``FrameSampling(fps=None, num_frames=64)``),
and for each ``--workers`` value times ``probe_video`` + ``decode_video_into`` into a
preallocated ``[T, H, W, 3]`` array: one warm-up run, then the median of ``--repeats`` runs.
Also times a naive single-decoder baseline (decode from the start, ``to_ndarray`` per wanted
frame). Every run's frames are checked against the indices drawn into them.

    python examples/bench_video_decode.py                       # 720p, workers 1 2 4
    python examples/bench_video_decode.py --resolutions 720p 1440p --noise 6

``cpu/wall`` is the process's CPU time per wall-clock second while decoding: above 1 only
when decoder threads ran at the same time, i.e. PyAV let go of the GIL.

``--noise`` adds film grain (grey levels), which makes the files (and their decoding) closer
to camera footage than the smooth synthetic picture.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from spava.media.parallel_decode import available_cpus
from spava.media.sampling import FrameSampling
from spava.media.synthetic import read_frame_index, write_synthetic_video
from spava.media.video import decode_video_into, plan_video_sampling, probe_video

RESOLUTIONS = {"480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920), "1440p": (1440, 2560)}


def _video(cache_dir: Path, resolution: str, seconds: float, fps: float, noise: float, gop: int | None) -> Path:
    height, width = RESOLUTIONS[resolution]
    height, width = height - height % 2, width - width % 2
    num_frames = round(seconds * fps)
    name = f"synthetic_{resolution}_{num_frames}f_{fps:g}fps_noise{noise:g}_gop{gop or 'default'}.mp4"
    path = cache_dir / name
    if not path.exists():
        start = time.perf_counter()
        tmp = path.with_suffix(".tmp.mp4")
        write_synthetic_video(tmp, num_frames=num_frames, height=height, width=width, fps=fps,
                              noise=noise, crf=23, keyframe_interval=gop)
        tmp.rename(path)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return path


def _run_once(path: Path, sampling: FrameSampling, num_workers: int, num_threads: int) -> tuple:
    """One probe + decode; returns (probe s, decode s, frames decoded, CPU s of the process while decoding)."""
    start = time.perf_counter()
    info = probe_video(path)
    plan = plan_video_sampling(info, sampling)
    probed = time.perf_counter()
    out = np.empty((plan.num_frames, info.height, info.width, 3), dtype=np.uint8)
    cpu_start = time.process_time()  # all threads of the process: above the wall time only if they ran at once
    report = decode_video_into(path, plan, out, info=info, num_workers=num_workers, num_threads=num_threads)
    cpu = time.process_time() - cpu_start
    done = time.perf_counter()
    decoded = [read_frame_index(frame) for frame in out]
    if decoded != [i % 256 for i in plan.indices]:
        raise AssertionError(f"wrong frames with num_workers={num_workers}")
    return probed - start, done - probed, report.num_decoded_frames, cpu


def _run_naive(path: Path, sampling: FrameSampling) -> tuple:
    """Baseline: one decoder from the start, ``to_ndarray`` (a fresh scaler) per wanted frame."""
    import av

    start = time.perf_counter()
    info = probe_video(path)
    plan = plan_video_sampling(info, sampling)
    probed = time.perf_counter()
    cpu_start = time.process_time()
    wanted, last = set(plan.indices), max(plan.indices)
    frames = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for position, frame in enumerate(container.decode(stream)):
            if position in wanted:
                frames[position] = frame.to_ndarray(format="rgb24")
            if position >= last:
                break
    out = np.stack([frames[i] for i in plan.indices])
    cpu = time.process_time() - cpu_start
    done = time.perf_counter()
    assert [read_frame_index(frame) for frame in out] == [i % 256 for i in plan.indices]
    return probed - start, done - probed, last + 1, cpu


def _free_cores() -> float:
    """CPU per wall second of two threads sorting with numpy (which releases the GIL): ~2 on two idle cores."""
    import threading

    data = np.random.default_rng(0).random(2_000_000)

    def sort() -> None:
        for _ in range(4):
            np.sort(data)

    threads = [threading.Thread(target=sort) for _ in range(2)]
    wall, cpu = time.perf_counter(), time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def _median_runs(run, repeats: int) -> tuple[float, float, float, int, float]:
    """Medians of probe, decode and total seconds; frames decoded; CPU per wall second of decoding."""
    run()  # warm-up: page cache, FFmpeg and numpy first-use costs
    results = [run() for _ in range(repeats)]
    probe = statistics.median(r[0] for r in results)
    decode = statistics.median(r[1] for r in results)
    total = statistics.median(r[0] + r[1] for r in results)
    cpu_per_wall = statistics.median(r[3] / r[1] for r in results)
    return probe, decode, total, results[0][2], cpu_per_wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", nargs="+", default=["720p"], choices=sorted(RESOLUTIONS))
    parser.add_argument("--seconds", type=float, default=32.0)
    parser.add_argument("--fps", type=float, default=24.0)
    parser.add_argument("--frames", type=int, default=64, help="sampled frames (uniform, exact count)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.0, help="film grain in grey levels (0: smooth picture)")
    parser.add_argument("--gop", type=int, default=None, help="keyframe interval in frames (default: x264's 250)")
    parser.add_argument("--threads", type=int, default=0,
                        help="FFmpeg threads per decoder (0: FFmpeg's choice for one, else a share of the cores)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive single-decoder baseline")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "spava_bench_video")
    args = parser.parse_args()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    sampling = FrameSampling(fps=None, num_frames=args.frames, max_frames=max(768, args.frames))
    print(f"{available_cpus()} CPU cores; {args.frames} frames sampled uniformly; median of {args.repeats} runs "
          f"after one warm-up; FFmpeg threads per decoder: {args.threads or 'auto'}")
    print(f"control: two numpy threads reach cpu/wall {_free_cores():.2f} (cores free to this process now)")
    print(f"{'video':<30} {'decoder':<11} {'probe s':>8} {'decode s':>9} {'total s':>8} {'decoded':>8} "
          f"{'speedup':>8} {'cpu/wall':>9}")
    for resolution in args.resolutions:
        path = _video(args.cache_dir, resolution, args.seconds, args.fps, args.noise, args.gop)
        label = f"{resolution} {args.seconds:g}s noise={args.noise:g} gop={args.gop or 250}"
        rows = [] if args.no_naive else [("naive 1x", _median_runs(lambda: _run_naive(path, sampling), args.repeats))]
        for num_workers in args.workers:
            run = lambda num_workers=num_workers: _run_once(path, sampling, num_workers, args.threads)  # noqa: E731
            rows.append((f"workers={num_workers}", _median_runs(run, args.repeats)))
        reference = next(row[2] for name, row in rows if name == f"workers={args.workers[0]}")
        for name, (probe, decode, total, decoded, cpu_per_wall) in rows:
            print(f"{label:<30} {name:<11} {probe:>8.3f} {decode:>9.3f} {total:>8.3f} {decoded:>8d} "
                  f"{reference / total:>7.2f}x {cpu_per_wall:>9.2f}")


if __name__ == "__main__":
    main()
