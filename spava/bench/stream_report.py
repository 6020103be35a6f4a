"""`spava bench-stream` bookkeeping: the run's header (environment, shared memory), speed-ups vs
sequential, the disaggregation target, the table and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time

TARGET_SPEEDUP = 1.3  # best disaggregated layout vs serving the stream one request at a time


def _sequential(runs: list[dict]) -> dict | None:
    """The sequential run, if every one of its requests finished."""
    return next((r for r in runs if r["mode"] == "sequential" and r["num_ok"] and r["num_ok"] == r.get("num_requests")),
                None)


def add_speedups(runs: list[dict]) -> None:
    """`speedup_vs_sequential` = requests/s of the run / requests/s of the sequential run."""
    base = _sequential(runs)
    for run in runs:
        run["speedup_vs_sequential"] = (run["requests_per_s"] / base["requests_per_s"]
                                        if base and run["requests_per_s"] else None)


def target_summary(runs: list[dict]) -> dict | None:
    """The disaggregation target: best disaggregated stream >= 1.3x the sequential requests/s."""
    base = _sequential(runs)
    disagg = [r for r in runs if r["num_encoders"] and r["mode"] == "stream" and r["num_ok"] == r.get("num_requests")]
    if base is None or not disagg:
        return None
    best = max(disagg, key=lambda r: r["requests_per_s"])
    ratio = best["requests_per_s"] / base["requests_per_s"]
    return {"best_disaggregated": best["layout"], "speedup": ratio, "target": TARGET_SPEEDUP,
            "met": ratio >= TARGET_SPEEDUP}


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """A Markdown table: one row per layout and mode."""
    lines = ["| layout | mode | GPUs (enc+prefill) | ok | wall s | req/s | TTFT p50 s | TTFT p90 s | "
             "model s | layout s | video s | vs sequential |", "|" + "---|" * 12]
    for run in report["runs"]:
        stages = run.get("stage_mean_s", {})
        speedup = run.get("speedup_vs_sequential")
        gpus = f"{run['num_encoders']}+{run['num_prefill']}" if run["num_encoders"] else f"{run['num_prefill']} (coloc.)"
        lines.append(
            f"| {run['layout']} | {run['mode']} | {gpus} | {run['num_ok']}/{run.get('num_requests', '?')} | "
            f"{_cell(run.get('wall_s'), '.1f')} | {run['requests_per_s']:.3f} | {_cell(run.get('ttft_median_s'), '.2f')} | "
            f"{_cell(run.get('ttft_p90_s'), '.2f')} | {_cell(stages.get('model_s'), '.2f')} | "
            f"{_cell(stages.get('layout_s'), '.2f')} | {_cell(stages.get('video_s'), '.2f')} | "
            f"{'-' if speedup is None else f'{speedup:.2f}x'} |")
    target = report.get("target")
    if target:
        lines.append(f"\ntarget (best disaggregated >= {target['target']}x sequential): {target['best_disaggregated']} "
                     f"{target['speedup']:.2f}x -> {'met' if target['met'] else 'missed'}")
    errors = [f"{run['layout']} {run['mode']}: {error}" for run in report["runs"] for error in run.get("errors", [])]
    return "\n".join(lines + [f"error: {e}" for e in errors[:10]])


def environment() -> dict:
    """Where it ran: host, CPU count, torch, GPUs (from nvidia-smi; no CUDA context in this process)."""
    import torch

    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30).stdout
            gpus = [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "gpus": gpus}


def write_json(path: str | None, report: dict) -> None:
    """Write (or rewrite) the report; called after every layout so a cut-off run keeps its results."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        json.dump(report, handle, indent=1)
    os.replace(temporary, path)


def shm_check(args, config, frames_shape, counts: list[int]) -> dict:
    """Shared-memory bytes of the stream (submitted frames + prepared frames and pixels) against what is
    free: a ValueError below the bare minimum (a full tmpfs kills a writer with SIGBUS), a note below
    the conservative peak."""
    from spava.models.qwen2_5_vl.processing import smart_resize

    _, height, width, _ = frames_shape
    resized_h, resized_w = smart_resize(height, width, 28, config.video.min_pixels, config.video.max_pixels)
    one = max(counts) * height * width * 3 + max(counts) * resized_h * resized_w * 3 * 4  # frames + float32 pixels
    submitted = sum(count * height * width * 3 for count in counts)
    needed, minimum = submitted + (args.max_prepared + 1) * one, submitted + one
    shm_dir = config.runtime.shm_dir
    free = shutil.disk_usage(shm_dir).free
    if free < minimum:
        raise ValueError(f"{shm_dir} has {free / 2**30:.1f} GiB free, the stream needs at least {minimum / 2**30:.1f} "
                         "GiB; pass runtime.shm_dir=<a larger directory> or lower --num-requests / --frames")
    if free < needed:
        print(f"note: the stream may need up to {needed / 2**30:.1f} GiB in {shm_dir}, {free / 2**30:.1f} GiB free; "
              "lower --max-prepared if requests fail", flush=True)
    return {"shm_dir": shm_dir, "shm_needed_gib": needed / 2**30, "shm_free_gib": free / 2**30,
            "frame_size": [height, width], "model_frame_size": [resized_h, resized_w]}
