"""`spava bench-stream`: requests/s and TTFT of a stream of video requests, per GPU layout.

    spava bench-stream --layouts colocated4 disagg1+3 disagg2+2 sequential --num-requests 8 \\
        --resolution 720 --frames 64 96 128 --json bench_out/stream.json

Method. For each layout (`colocatedN`: N GPUs each encode a share of the frames and prefill a
sequence shard; `disaggE+P`: E GPUs run the vision encoder, the next P run prefill + decode) one
`Pipeline` is started from `--config` (default: the 7B 4-GPU YAML, random weights from the size
preset) with `encode.devices` / `prefill.devices` set, and serves:

* warm-up requests (`--warmup`, default one per distinct frame count, largest first, submitted
  together; they compile the vision encoder's kernels and plan the attention kernels for every shape
  of the stream) -- excluded from every number;
* the measured stream: N requests of synthetic, already decoded uint8 frames (`--resolution`, frame
  counts cycling through `--frames`, one fixed-seed buffer sliced per request), each asking one
  question with `max_new_tokens` small. Mode `stream` submits all N at once, so video sampling,
  layout (CPU: resize, patchify) and the model stage of different requests overlap, bounded by
  `runtime.max_prepared_requests`. Mode `sequential` (the layout name `sequential`, run on
  `--sequential-layout`, default the first colocated layout) submits request i+1 only after request i
  has finished: serving the same stream one request at a time.

Timing. A request's TTFT is measured in this (client) process from the start of `Pipeline.submit`
(which also copies the frames into shared memory) to the arrival of its first streamed token
(`stream=True`); in stream mode it includes the time spent queued behind earlier requests, as a
served user sees it. Wall time runs from the first submit to the last result; requests/s = finished
requests / wall time. Per-stage means come from the pipeline's own `RunResult.timings` (seconds in
each stage and queue, max over model ranks). Start-up and warm-up times are reported separately.

What overlaps: CPU stages (video, layout) of later requests run beside the model stage; in
disaggregated layouts the encoder GPUs encode the next requests (the ready ones batched in one
vision-tower call, `encode.max_batch_requests`) while the prefill GPUs run request i
(`spava.runtime.model_groups`). Colocated, the model stage runs one request at a time.
"""

from __future__ import annotations

import argparse
import re
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from spava.bench.stream_report import add_speedups, environment, format_table, shm_check, target_summary, write_json
from spava.config import load_config

PROMPT = "What happens in this video?"
RESOLUTIONS = {360: (360, 640), 720: (720, 1280), 1080: (1080, 1920), 1440: (1440, 2560)}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = {"cuda": CONFIGS / "qwen2_5_vl_7b_4gpu.yaml", "cpu": CONFIGS / "demo_cpu.yaml"}


@dataclass(frozen=True)
class Layout:
    """GPU roles: `num_encoders` vision-encoder devices, then `num_prefill` prefill/decode devices."""

    name: str
    num_encoders: int
    num_prefill: int

    def devices(self, device: str) -> tuple[list[str], list[str]]:
        def names(first: int, count: int) -> list[str]:
            return ["cpu"] * count if device == "cpu" else [f"cuda:{i}" for i in range(first, first + count)]

        return names(0, self.num_encoders), names(self.num_encoders, self.num_prefill)


def parse_layout(name: str) -> Layout:
    """`colocatedN` or `disaggE+P` -> Layout; anything else is a ValueError naming the forms."""
    match = re.fullmatch(r"colocated(\d+)|disagg(\d+)\+(\d+)", name)
    if match is None:
        raise ValueError(f"layout {name!r}: use colocatedN, disaggE+P (e.g. disagg1+3) or sequential")
    layout = (Layout(name, 0, int(match.group(1))) if match.group(1)
              else Layout(name, int(match.group(2)), int(match.group(3))))
    if layout.num_prefill < 1 or (match.group(2) and layout.num_encoders < 1):
        raise ValueError(f"layout {name!r} needs at least one prefill device (and one encoder when disaggregated)")
    return layout


def plan_runs(names: list[str], sequential_layout: str | None) -> list[tuple[Layout, list[str]]]:
    """Layouts in order, each with its modes; `sequential` joins the sequential layout's pipeline."""
    plan: dict[str, list[str]] = {}
    for name in names:
        if name != "sequential":
            parse_layout(name)
            plan.setdefault(name, []).append("stream")
    if "sequential" in names:
        base = sequential_layout or next((n for n in plan if n.startswith("colocated")), None)
        if base is None:
            raise ValueError("`sequential` needs --sequential-layout or a colocatedN layout in --layouts")
        parse_layout(base)
        plan.setdefault(base, []).insert(0, "sequential")
    return [(parse_layout(name), modes) for name, modes in plan.items()]


def parse_resolution(text: str) -> tuple[int, int]:
    """'720' -> (720, 1280) (16:9 paper sizes), 'WxH' -> (H, W)."""
    if text.isdigit() and int(text) in RESOLUTIONS:
        return RESOLUTIONS[int(text)]
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if match is None:
        raise ValueError(f"--resolution {text!r}: use one of {sorted(RESOLUTIONS)} or WIDTHxHEIGHT")
    return int(match.group(2)), int(match.group(1))


def frame_schedule(frames: list[int], num_requests: int) -> list[int]:
    """Frame count of each request: `frames` cycled (64, 96, 128, 64, ...)."""
    return [frames[i % len(frames)] for i in range(num_requests)]


def warmup_schedule(frames: list[int], count: int) -> list[int]:
    """Largest, then smallest, then the other frame counts, cut to `count` requests."""
    distinct = sorted(set(frames))
    order = [distinct[-1]] + ([distinct[0]] if len(distinct) > 1 else []) + distinct[1:-1]
    return [order[i % len(order)] for i in range(count)]


def make_frames(height: int, width: int, num_frames: int, seed: int):
    """One fixed-seed uint8 buffer [T, H, W, 3]; request i uses its first T_i frames."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


# ----- serving and timing ----------------------------------------------------------------------

@dataclass
class Tracked:
    """Client-side times of one request (perf_counter seconds) and its outcome."""

    index: int
    num_frames: int
    submitted: float
    first_token: float | None = None
    finished: float | None = None
    result: object = None
    error: str | None = None


def _watch(handle, tracked: Tracked) -> None:
    for _ in handle.tokens():
        if tracked.first_token is None:
            tracked.first_token = time.perf_counter()
    try:
        tracked.result = handle.result()
    except Exception as error:  # noqa: BLE001 - every failure is recorded, the stream goes on
        tracked.error = f"{type(error).__name__}: {error}"
    tracked.finished = time.perf_counter()


def serve(pipe, frames, counts: list[int], *, is_sequential: bool, args, tag: str) -> tuple[list[Tracked], float]:
    """Submit one request per entry of `counts` (all at once, or one after another); -> records, wall s.

    Each request is watched by its own thread, which timestamps its first streamed token."""
    tracked, threads = [], []
    start = time.perf_counter()
    for index, count in enumerate(counts):
        item = Tracked(index, count, time.perf_counter())
        handle = pipe.submit(frames[:count], PROMPT, stream=True, max_new_tokens=args.max_new_tokens,
                             video_options={"fps": None, "num_frames": count}, timeout_s=args.request_timeout,
                             request_id=f"{tag}-{index}")
        thread = threading.Thread(target=_watch, args=(handle, item), daemon=True)
        thread.start()
        tracked.append(item)
        threads.append(thread)
        if is_sequential:
            thread.join()
    for thread in threads:
        thread.join()
    return tracked, time.perf_counter() - start


def _p90(values: list[float]) -> float | None:
    """90th percentile, linear interpolation between order statistics (numpy's default)."""
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def summarize(layout: Layout, mode: str, tracked: list[Tracked], wall_s: float) -> dict:
    """One run's numbers: requests/s, TTFT median / p90, mean seconds per pipeline stage."""
    ok = [t for t in tracked if t.error is None and t.result is not None]
    ttft = [t.first_token - t.submitted for t in ok if t.first_token is not None]
    keys = sorted({key for t in ok for key in t.result.timings})
    return {
        "layout": layout.name, "mode": mode, "num_encoders": layout.num_encoders, "num_prefill": layout.num_prefill,
        "num_requests": len(tracked), "num_ok": len(ok), "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s if wall_s > 0 else 0.0,
        "ttft_median_s": statistics.median(ttft) if ttft else None, "ttft_p90_s": _p90(ttft),
        "ttft_mean_s": statistics.fmean(ttft) if ttft else None,
        "latency_median_s": statistics.median([t.finished - t.submitted for t in ok]) if ok else None,
        "stage_mean_s": {k: statistics.fmean(t.result.timings.get(k, 0.0) for t in ok) for k in keys},
        "prompt_tokens_by_frames": {str(t.num_frames): t.result.num_prompt_tokens for t in ok},
        "errors": [f"request {t.index}: {t.error}" for t in tracked if t.error],
    }


def request_rows(run: dict, tracked: list[Tracked], start: float) -> list[dict]:
    """Per-request rows of the JSON: frames, TTFT, latency, submit time from the run's start, timings."""
    rows = []
    for t in tracked:
        result = t.result
        rows.append({"layout": run["layout"], "mode": run["mode"], "index": t.index, "frames": t.num_frames,
                     "ttft_s": None if t.first_token is None else t.first_token - t.submitted,
                     "latency_s": None if t.finished is None else t.finished - t.submitted,
                     "submit_offset_s": t.submitted - start, "error": t.error,
                     "num_prompt_tokens": getattr(result, "num_prompt_tokens", None),
                     "timings": getattr(result, "timings", None)})
    return rows


# ----- one pipeline per layout -------------------------------------------------------------------

def build_config(args, layout: Layout):
    """The base YAML with this layout's devices and the benchmark's settings as overrides."""
    encode, prefill = layout.devices(args.device)
    overrides = [
        f"encode.devices=[{','.join(repr(d) for d in encode)}]", f"prefill.devices=[{','.join(repr(d) for d in prefill)}]",
        f"prefill.attention.method={args.method}", f"decode.max_new_tokens={args.max_new_tokens}",
        f"runtime.max_prepared_requests={args.max_prepared}", f"layout.num_workers={args.layout_workers}",
        f"video.num_workers={args.video_workers}", "runtime.log_level=WARNING",
    ]
    overrides += [f"model.size={args.size}"] if args.size else []
    overrides += [f"model.dtype={args.dtype}"] if args.dtype else []
    return load_config(args.config or DEFAULT_CONFIG[args.device], overrides + list(args.overrides))


def _failed_runs(layout: Layout, modes: list[str], num_requests: int, error: str) -> list[dict]:
    return [{"layout": layout.name, "mode": mode, "num_encoders": layout.num_encoders, "num_prefill": layout.num_prefill,
             "num_requests": num_requests, "num_ok": 0, "requests_per_s": 0.0, "errors": [error]} for mode in modes]


def run_layout(args, layout: Layout, modes: list[str], frames, counts: list[int], report: dict) -> None:
    """Start the layout's pipeline, warm it up, run its modes, append runs and requests to `report`."""
    from spava.runtime.pipeline import Pipeline

    started = time.perf_counter()
    try:
        pipe = Pipeline.from_config(build_config(args, layout), is_quiet=True, log_path=args.worker_log).start()
    except (RuntimeError, ValueError) as error:
        report["runs"] += _failed_runs(layout, modes, len(counts), f"start-up: {error}")
        return
    startup_s = time.perf_counter() - started
    print(f"[{layout.name}] started in {startup_s:.1f} s", flush=True)
    try:
        warm, warm_s = serve(pipe, frames, warmup_schedule(counts, args.warmup), is_sequential=False, args=args,
                             tag=f"{layout.name}-warm")
        errors = [t.error for t in warm if t.error]
        print(f"[{layout.name}] warm-up: {len(warm)} requests in {warm_s:.1f} s", flush=True)
        if errors:
            report["runs"] += _failed_runs(layout, modes, len(counts), f"warm-up: {errors[0]}")
            return
        for mode in modes:
            tracked, wall_s = serve(pipe, frames, counts, is_sequential=mode == "sequential", args=args,
                                    tag=f"{layout.name}-{mode}")
            run = {**summarize(layout, mode, tracked, wall_s), "startup_s": startup_s, "warmup_s": warm_s}
            report["runs"].append(run)
            report["requests"] += request_rows(run, tracked, tracked[0].submitted)
            print(f"[{layout.name}] {mode}: {run['num_ok']}/{len(tracked)} ok, {run['requests_per_s']:.3f} req/s, "
                  f"TTFT median {run['ttft_median_s'] or 0:.2f} s", flush=True)
    finally:
        pipe.close()


# ----- arguments, main -------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="spava bench-stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="base pipeline YAML (default: 7B 4-GPU colocated; demo_cpu with --device cpu)")
    parser.add_argument("--layouts", nargs="+", default=["colocated4", "sequential", "disagg1+3", "disagg2+2"],
                        help="colocatedN, disaggE+P, and `sequential` (one request at a time on --sequential-layout)")
    parser.add_argument("--sequential-layout", help="layout of the sequential mode (default: the first colocatedN)")
    parser.add_argument("--num-requests", type=int, default=8)
    parser.add_argument("--resolution", default="720", help="360 / 720 / 1080 / 1440 (16:9) or WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, nargs="+", default=[64, 96, 128], help="frame counts, cycled")
    parser.add_argument("--method", default="spava", help="prefill.attention.method")
    parser.add_argument("--size", help="model.size preset (random weights); default: the base YAML's")
    parser.add_argument("--dtype", help="model.dtype; default: the base YAML's")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--max-new-tokens", type=int, default=2)
    parser.add_argument("--warmup", type=int, help="warm-up requests per layout, not measured (default: one per "
                        "distinct frame count, so every shape is compiled before the stream)")
    parser.add_argument("--max-prepared", type=int, default=4, help="runtime.max_prepared_requests (back-pressure)")
    parser.add_argument("--layout-workers", type=int, default=4, help="layout.num_workers (CPU resize + patchify)")
    parser.add_argument("--video-workers", type=int, default=1, help="video.num_workers")
    parser.add_argument("--request-timeout", type=float, default=600.0, help="seconds before a request fails")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here (rewritten after every layout)")
    parser.add_argument("--worker-log", help="append the workers' stderr to this file (default: this terminal)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more config overrides, applied last")
    args = parser.parse_args(argv)
    args.warmup = len(set(args.frames)) if args.warmup is None else args.warmup
    if args.num_requests < 1 or args.warmup < 0 or any(f < 2 or f % 2 for f in args.frames):
        parser.error("--num-requests must be >= 1, --warmup >= 0 and every --frames an even number >= 2")
    return args


def main(argv=None) -> int:
    """Run every layout of `--layouts`; print the table; 0 if every request of every run finished."""
    args = parse_args(argv)
    counts = frame_schedule(args.frames, args.num_requests)
    try:
        plan = plan_runs(args.layouts, args.sequential_layout)
        height, width = parse_resolution(args.resolution)
        first_config = build_config(args, plan[0][0])
        frames = make_frames(height, width, max(args.frames), args.seed)
        shm = shm_check(args, first_config, frames.shape, counts)
    except ValueError as error:
        print(f"spava bench-stream: {error}")
        return 2
    report = {"header": {**environment(), "args": dict(vars(args)), "frame_counts": counts, **shm,
                         "model_size": first_config.model.size, "dtype": first_config.model.dtype},
              "runs": [], "requests": []}
    print(f"spava bench-stream: {first_config.model.size} {first_config.model.dtype}, {width}x{height}, frames "
          f"{counts}, method {args.method}, runs {[(layout.name, modes) for layout, modes in plan]}", flush=True)
    for layout, modes in plan:
        run_layout(args, layout, modes, frames, counts, report)
        add_speedups(report["runs"])
        write_json(args.json, report)
    report["target"] = target_summary(report["runs"])
    write_json(args.json, report)
    print(format_table(report))
    return 0 if all(r["num_ok"] == r.get("num_requests") and not r["errors"] for r in report["runs"]) else 1
