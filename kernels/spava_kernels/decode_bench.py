"""Benchmark of `spava_kernels.decode_attention` (`python -m spava_kernels.decode_attention`).

On CUDA: one new query row at Qwen2.5-VL-7B shapes (28 query heads, 4 KV heads, D 128, bf16) over
the first `length` rows of one preallocated cache, for each length: the Triton kernel (tensor
length, also replayed from a CUDA graph; int length), torch's SDPA (cuDNN through aten with GQA, and
the default dispatcher with enable_gqa) and a copy of the same bytes as the bandwidth roof. Times
are CUDA-event medians over repeats, each after a write of a 256 MiB buffer that evicts L2 (and keeps
the GPU busy while the host enqueues the call); warm-up is excluded. GB/s counts the K and V bytes
of `length` rows, which every kernel must read once. Without CUDA, tiny sizes on the CPU (the torch
reference against SDPA's math; wall-clock medians) show that the module imports and runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from spava_kernels.decode_attention import DecodeAttention, decode_attention

L2_FLUSH_BYTES = 256 << 20


def _cuda_median_ms(fn: Callable[[], object], repeats: int, flush: torch.Tensor) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        flush.zero_()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def _cpu_median_ms(fn: Callable[[], object], repeats: int, flush: Optional[torch.Tensor] = None) -> float:
    fn()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def _bhsd(x: torch.Tensor) -> torch.Tensor:
    """`[S, H, D]` -> `[1, H, S, D]` view (SDPA's layout)."""
    return x.transpose(0, 1).unsqueeze(0)


def _cudnn_case(q, k, v):
    """cuDNN SDPA through aten with the cache's GQA views, as spava's torch_cuda backend calls it; None
    when this torch / cuDNN rejects them."""
    def run():
        return torch.ops.aten._scaled_dot_product_cudnn_attention(_bhsd(q), _bhsd(k), _bhsd(v), None, True, 0.0,
                                                                  False, False)[0]
    try:
        run()
    except RuntimeError:
        return None
    return run


def _graph(fn: Callable[[], object]) -> Callable[[], object]:
    """fn captured in a CUDA graph (after a warm-up run on a side stream); returns the replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _cases(q, k_cache, v_cache, length: int, device) -> list[tuple[str, Callable[[], object]]]:
    k, v = k_cache[:length], v_cache[:length]
    sdpa = lambda: F.scaled_dot_product_attention(_bhsd(q), _bhsd(k), _bhsd(v), enable_gqa=True)  # noqa: E731
    if device.type != "cuda":
        return [("torch reference, int length", lambda: decode_attention(q, k_cache, v_cache, length, impl="torch")),
                ("sdpa math (enable_gqa)", sdpa)]
    attention = DecodeAttention()
    length_tensor = torch.tensor([length], dtype=torch.int32, device=device)
    out, lse = torch.empty_like(q), torch.empty(q.shape[:2], dtype=torch.float32, device=device)
    cases = [("triton, tensor length", lambda: attention(q, k_cache, v_cache, length_tensor, out=out, lse_out=lse)),
             ("triton, int length", lambda: attention(q, k_cache, v_cache, length, out=out, lse_out=lse)),
             ("triton, graph replay", _graph(lambda: attention(q, k_cache, v_cache, length_tensor, out=out,
                                                                lse_out=lse)))]
    cudnn = _cudnn_case(q, k, v)
    if cudnn is not None:
        cases.append(("sdpa cudnn (aten, gqa)", cudnn))
    cases.append(("sdpa default (enable_gqa)", sdpa))
    src = torch.empty(k.numel() * k.element_size(), dtype=torch.uint8, device=device)  # as many bytes as K + V
    dst = torch.empty_like(src)
    cases.append(("copy (same bytes)", lambda: dst.copy_(src)))
    return cases


def run(lengths: list[int], num_heads: int, num_kv_heads: int, dim: int, repeats: int, dtype: torch.dtype,
        device: torch.device) -> None:
    """Print one table row per (length, case): median time, GB/s of K + V reads, max |out - SDPA|."""
    capacity = max(lengths)
    generator = torch.Generator(device=device).manual_seed(0)
    k_cache = torch.randn(capacity, num_kv_heads, dim, device=device, dtype=dtype, generator=generator)
    v_cache = torch.randn(capacity, num_kv_heads, dim, device=device, dtype=dtype, generator=generator)
    q = torch.randn(1, num_heads, dim, device=device, dtype=dtype, generator=generator)
    is_cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if is_cuda else "CPU (tiny sizes; proves the module runs)"
    timer = _cuda_median_ms if is_cuda else _cpu_median_ms
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if is_cuda else None
    print(f"decode attention, 1 query row: Hq {num_heads}, Hkv {num_kv_heads}, D {dim}, {dtype}, capacity {capacity}; "
          f"{name}; median of {repeats}")
    print(f"{'length':>8} {'K+V MB':>8}  {'case':28} {'time us':>9} {'GB/s':>7} {'max|diff|':>10}")
    for length in lengths:
        k, v = k_cache[:length], v_cache[:length]
        want = F.scaled_dot_product_attention(_bhsd(q).float(), _bhsd(k).float(), _bhsd(v).float(), enable_gqa=True)
        want = want[0].transpose(0, 1)
        kv_bytes = 2 * k.numel() * k.element_size()
        for case, fn in _cases(q, k_cache, v_cache, length, device):
            ms = timer(fn, repeats, flush)
            got = fn()
            got = got[0] if isinstance(got, tuple) else got
            diff = ""
            if isinstance(got, torch.Tensor) and got.dim() == 4:
                got = got[0].transpose(0, 1)
            if isinstance(got, torch.Tensor) and got.shape == want.shape:
                diff = f"{float((got.float() - want).abs().max()):.2e}"
            elif case.startswith("triton"):  # graph replay returns nothing: the kernel wrote `out`
                diff = "(graph)"
            print(f"{length:>8} {kv_bytes / 1e6:>8.1f}  {case:28} {ms * 1e3:>9.1f} {kv_bytes / ms / 1e6:>7.0f} "
                  f"{diff:>10}")


def sweep(lengths: list[int], num_heads: int, num_kv_heads: int, dim: int, repeats: int) -> None:
    """Time the kernel's launch configs (`decode_kernels.Config`) and split counts (programs per SM) at
    each length: CUDA-graph replays of tensor-length calls, bf16; one row per case."""
    from spava_kernels.decode_kernels import Config

    device, dtype = torch.device("cuda"), torch.bfloat16
    capacity = max(lengths)
    k_cache = torch.randn(capacity, num_kv_heads, dim, device=device, dtype=dtype)
    v_cache = torch.randn(capacity, num_kv_heads, dim, device=device, dtype=dtype)
    q = torch.randn(1, num_heads, dim, device=device, dtype=dtype)
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    configs = [Config(64, 4, 3, 256), Config(64, 4, 4, 256), Config(64, 4, 2, 256), Config(32, 4, 4, 256),
               Config(128, 4, 3, 256), Config(128, 8, 3, 256), Config(64, 8, 4, 256), Config(64, 4, 3, 128),
               Config(64, 4, 3, 512)]
    print(f"sweep: Hq {num_heads}, Hkv {num_kv_heads}, D {dim}, bf16, capacity {capacity}; "
          f"{torch.cuda.get_device_name(device)} ({num_sms} SMs)")
    print(f"{'length':>8} {'config':32} {'splits':>6} {'time us':>9} {'GB/s':>7}")
    attention = DecodeAttention(max_workspaces=16)
    out, lse = torch.empty_like(q), torch.empty(q.shape[:2], dtype=torch.float32, device=device)
    for length in lengths:
        length_tensor = torch.tensor([length], dtype=torch.int32, device=device)
        kv_bytes = 2 * length * num_kv_heads * dim * k_cache.element_size()
        for config in configs:
            for per_sm in (1, 2, 4):
                num_splits = -(-per_sm * num_sms // num_kv_heads)
                replay = _graph(lambda: attention(q, k_cache, v_cache, length_tensor, num_splits=num_splits,
                                                  out=out, lse_out=lse, config=config))
                ms = _cuda_median_ms(replay, repeats, flush)
                print(f"{length:>8} {str(tuple(config)):32} {num_splits:>6} {ms * 1e3:>9.1f} "
                      f"{kv_bytes / ms / 1e6:>7.0f}")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Time spava_kernels.decode_attention against torch SDPA")
    parser.add_argument("--lengths", default="8192,32768,148000,594000", help="cache lengths (comma-separated)")
    parser.add_argument("--heads", type=int, default=28)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--sweep", action="store_true", help="time the kernel's launch configs and split counts")
    cli = parser.parse_args(argv)
    if cli.sweep:
        sweep([int(x) for x in cli.lengths.split(",")], cli.heads, cli.kv_heads, cli.dim, cli.repeats)
    elif torch.cuda.is_available():
        lengths = [int(x) for x in cli.lengths.split(",")]
        run(lengths, cli.heads, cli.kv_heads, cli.dim, cli.repeats, torch.bfloat16, torch.device("cuda"))
    else:
        run([64, 1000], 4, 2, 64, 5, torch.float32, torch.device("cpu"))
