"""Per-rank benchmark loop: every method on the same inputs, timed the same way.

Each rank holds the full random-weight model once. For every case and method: warm-up runs, then
timed runs of time-to-first-token (video already decoded: ViT + prefill + last-token logits + the
first token sampled and broadcast), each bracketed by a device synchronisation and a barrier; the
slowest rank's time counts; the median is reported. `full` and `hf` run on rank 0 alone.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from spava.attention.config import AttentionConfig
from spava.attention.registry import available_methods, get_method
from spava.bench.inputs import FRAMES_PER_SECOND, VideoCase
from spava.comm.collectives import SPComm
from spava.models.runner import ModelRunner

HF_BASELINE = "hf"  # HF transformers on one GPU: a baseline, not an attention method
NOT_BY_DEFAULT = ("ring",)  # zigzag_ring is the same K/V exchange with the causal work balanced


def method_choices() -> list[str]:
    """What a benchmark may run: every named attention method (the registry's) and the HF baseline."""
    return [*available_methods(), HF_BASELINE]


def default_methods() -> list[str]:
    """full, the HF baseline, then every other named method but those in `NOT_BY_DEFAULT`."""
    others = [name for name in available_methods() if name != "full" and name not in NOT_BY_DEFAULT]
    return ["full", HF_BASELINE, *others]


@dataclass
class BenchSpec:
    model: str = "auto"  # model family (spava.models.family.FAMILIES); auto: the checkpoint's, else Qwen2.5-VL
    size: str = "7b"
    cases: list = field(default_factory=lambda: [VideoCase(1440, 64)])
    methods: list = field(default_factory=default_methods)
    world_sizes: list = field(default_factory=lambda: [4])
    repeats: int = 3
    warmup: int = 1
    device: str = "cuda"
    dtype: str = "bfloat16"
    backend: str = "auto"
    mlp_chunk_size: int = 8192
    hf_max_tokens: int = 10**9  # skip the HF baseline above this many prompt tokens
    encoder: str = "fast"  # vision tower implementation: fast | hf
    model_path: str | None = None  # a local checkpoint instead of random weights of `size`
    attention: AttentionConfig | None = None  # hyperparameters of the parallel method (None: its defaults)
    profile_dir: str = ""  # when set: one profiled run per parallel method, rank 0, into this directory


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, group) -> float:
    """Wall time of fn() on the slowest rank of `group` (synchronised, barrier-bracketed)."""
    _sync(device)
    dist.barrier(group=group)
    start = time.perf_counter()
    fn()
    _sync(device)
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64,
                           device=device if device.startswith("cuda") else "cpu")
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX, group=group)
    return float(elapsed)


class TimedEncoder:
    """Wraps the adapter's vision encoder to accumulate its synchronised wall time."""

    def __init__(self, encode, device: str):
        self.encode, self.device, self.seconds = encode, device, 0.0

    def __call__(self, rows, grid):
        _sync(self.device)
        start = time.perf_counter()
        out = self.encode(rows, grid)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        return out


class PhaseTimer:
    """Synchronised wall time of named phases (wrapped callables), summed over a run."""

    def __init__(self, device: str):
        self.device, self.seconds = device, {}

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            _sync(self.device)
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            _sync(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            return result
        return timed


def instrument(runner: ModelRunner, phases: PhaseTimer) -> None:
    """Time the vision feed and the decoder layers of `runner` (for the per-stage breakdown)."""
    runner.vision_feed = phases.wrap("vision_feed_s", runner.vision_feed)
    runner.decoder.prefill = phases.wrap("layers_s", runner.decoder.prefill)


def profile_once(run_once, device: str, path: str, trace_path: str = "") -> None:
    """One run under torch.profiler; writes the top ops by device and by host time to `path`, and
    (when `trace_path` is given) a gzipped Chrome trace for a timeline view (idle gaps, overlap)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    _sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        run_once()
        _sync(device)
    wall = time.perf_counter() - start
    averages = prof.key_averages()
    key = "device_time_total" if device.startswith("cuda") else "cpu_time_total"
    with open(path, "w") as handle:
        handle.write(f"profiled run: {wall:.3f} s wall (profiler overhead included)\n")
        handle.write(averages.table(sort_by=key, row_limit=40))
        handle.write("\n\n")
        handle.write(averages.table(sort_by="cpu_time_total", row_limit=30))
    if trace_path:
        import gzip
        import shutil

        raw = trace_path.removesuffix(".gz")
        prof.export_chrome_trace(raw)
        with open(raw, "rb") as src, gzip.open(trace_path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(raw)


def _first_token(runner: ModelRunner, inputs) -> None:
    state = runner.prefill(inputs)
    token = torch.zeros(1, dtype=torch.long)
    if state.logits is not None:
        token[0] = int(torch.argmax(state.logits))
    runner.comm.broadcast(token, state.plan.decode_rank)


def _hf_first_token(adapter, inputs) -> None:
    """HF transformers' own forward on the same prompt and pixel rows: the first token."""
    seconds = adapter.vision_spec.temporal_patch_size / FRAMES_PER_SECOND  # as make_inputs' frames
    kwargs = adapter.hf_inputs(inputs.input_ids, inputs.pixel_values, inputs.grid_thw, "video", seconds)
    with torch.inference_mode():
        logits = adapter.hf(**kwargs, logits_to_keep=1, use_cache=True).logits
        int(torch.argmax(logits[0, -1]))


def _runner(adapter, spec: BenchSpec, name: str, comm: SPComm) -> ModelRunner:
    if spec.attention is not None and spec.attention.method == name:
        method = get_method(spec.attention)
    else:
        method = get_method(AttentionConfig(method=name, backend=spec.backend))
    return ModelRunner(adapter, method, comm, mlp_chunk_size=spec.mlp_chunk_size)


def matmul_tflops(device: str, size: int = 8192, repeats: int = 10) -> float:
    """Measured dense bf16 (fp32 on CPU) matmul rate: the ceiling used for the roofline."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    size = size if device.startswith("cuda") else 1024
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    times = []
    for index in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if index >= 2:
            times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e12


def _sum_over(group, value: float, device: str) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device if device.startswith("cuda") else "cpu")
    dist.all_reduce(tensor, group=group)
    return float(tensor)


def _max_over(group, value: float, device: str) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device if device.startswith("cuda") else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=group)
    return float(tensor)


def _reset_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0


def measure(run_once, spec: BenchSpec, device: str, group, timer: TimedEncoder) -> dict:
    """Warm-up, then `repeats` timed runs: median TTFT, median ViT time, peak memory (max over ranks)."""
    _reset_memory(device)
    for _ in range(spec.warmup):
        run_once()
    times, vit = [], []
    for _ in range(spec.repeats):
        timer.seconds = 0.0
        times.append(_timed(run_once, device, group))
        vit.append(_max_over(group, timer.seconds, device))
    return {"seconds": statistics.median(times), "all_seconds": times, "vit_seconds": statistics.median(vit),
            "peak_gb": _max_over(group, _peak_gb(device), device)}
