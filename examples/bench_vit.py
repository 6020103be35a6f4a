"""Benchmark the Qwen2.5-VL vision tower: spava's `FastQwen25Vision` against HF transformers' forward.

Random bf16 weights built on the device, synthetic pixel rows of smart-resized frames (one grid_thw row
per video, as HF's processor makes), warm-up excluded, CUDA-synchronised, median of repeats; achieved
TFLOP/s against a bf16 matmul rate measured here.

    python examples/bench_vit.py --size 7b --resolutions 1440 --frames 64 --impl both
    torchrun --nproc-per-node 4 examples/bench_vit.py --size 7b --resolutions 1440 --frames 64
    python examples/bench_vit.py --size tiny --device cpu --resolutions 360 --frames 4   # CPU smoke run

Frame parallel (`--world-size N` spawns, or torchrun): each rank encodes a consecutive, balanced share of
the temporal grids; the time reported is the slowest rank's, between barriers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist

from spava.models.qwen2_5_vl.presets import qwen2_5_vl_config
from spava.models.qwen2_5_vl.processing import QwenProcessorConfig, get_grid_thw
from spava.models.qwen2_5_vl.vision_fast import FastQwen25Vision, canonical_grids
from spava.models.varlen_attention import plan_varlen_groups, triton_windows_available, varlen_attention
from spava.models.vision_parallel import assign_units, plan_vision_units

RESOLUTIONS = {360: (360, 640), 720: (720, 1280), 1440: (1440, 2560)}
HF_SECONDS_PER_ATTENTION_CALL = 35e-6  # HF's per-window SDPA path: 11.9 s for 7B 1440p 64f on an H200
BACKEND_CHOICES = (["cudnn"], ["flash"], ["efficient"])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="7b", help="7b | 3b | 32b | 72b | tiny")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[360, 720, 1440], choices=sorted(RESOLUTIONS))
    parser.add_argument("--frames", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--impl", default="both", choices=["ours", "hf", "both"])
    for name, default in (("--repeats", 3), ("--warmup", 1), ("--seed", 0)):
        parser.add_argument(name, type=int, default=default)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--max-seconds", type=float, default=90.0,
                        help="HF budget per case: fewer runs, or skipped, when predicted to take longer")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--world-size", type=int, default=1, help="frame-parallel ranks (spawned unless torchrun)")
    parser.add_argument("--max-patches-per-chunk", type=int, default=600_000, help="ours: chunked encoding bound")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="ours: torch.compile")
    parser.add_argument("--attn-backends", nargs="+", default=["auto"],
                        help="ours: 'auto' (time each), 'default' (FastQwen25Vision's: the Triton kernels on CUDA) "
                             "or e.g. 'cudnn,flash' (both block kinds), 'triton/cudnn' (window blocks / full blocks; "
                             "'triton' is the window kernel for windows, the flash kernel for full blocks); "
                             "several values: one 'ours' row each")
    parser.add_argument("--fused-rotary", nargs="+", default=["on"], choices=["on", "off"],
                        help="ours: window kernel rotates q, k on load (FastQwen25Vision's fuse_window_rotary); "
                             "'on off': one row each, per --attn-backends value")
    parser.add_argument("--fused-swiglu", nargs="+", default=["auto"], choices=["auto", "on", "off"],
                        help="ours: gate/up GEMM + SwiGLU as one Triton kernel (FastQwen25Vision's fuse_swiglu; "
                             "auto: where it runs); several values: one row each")
    parser.add_argument("--flash-configs", nargs="+", default=["default"],
                        help="ours: launch config of the flash kernel (full blocks): 'default', "
                             "'BLOCK_M,BLOCK_N,WARPS,STAGES[,tma]' (Triton kernel) or "
                             "'sm90:BLOCK_M,BLOCK_N,STAGES,WARPS,CONSUMERS,CTAS_PER_SM[,serial|,pingpong]' "
                             "(Gluon kernel); "
                             "several values: one row each")
    parser.add_argument("--swiglu-configs", nargs="+", default=["default"],
                        help="ours: launch config of the fused gate/up + SwiGLU GEMM: 'default', "
                             "'BLOCK_M,BLOCK_N,BLOCK_K,GROUP_M,STAGES,WARPS' (Triton kernel) or "
                             "'sm90:BLOCK_M,BLOCK_N,BLOCK_K,GROUP_M,STAGES,WARPS' (Gluon kernel); one row each")
    parser.add_argument("--mlp-multiple", type=int, default=64, help="ours: MLP width padding")
    parser.add_argument("--matmul-size", type=int, default=None, help="n of the n^3 rate probe (8192 GPU, 512 CPU)")
    parser.add_argument("--profile", action="store_true", help="print ours' top kernels for the first case")
    return parser.parse_args(argv)


def window_sizes(grid, merge: int, units_per_window: int) -> list[tuple[int, int]]:
    """[(tokens per window, number of windows)] of one grid row (t, h, w)."""
    grid_t, grid_h, grid_w = grid
    rows, cols, upw = grid_h // merge, grid_w // merge, units_per_window
    counts: dict[int, int] = {}
    for r in range(0, rows, upw):
        for c in range(0, cols, upw):
            size = min(upw, rows - r) * min(upw, cols - c) * merge * merge
            counts[size] = counts.get(size, 0) + grid_t
    return sorted(counts.items(), reverse=True)


def count_flops(vcfg, grids) -> dict[str, float]:
    """Useful FLOPs (2 per multiply-add) by part; `grids` are (t, h, w) rows."""
    c, inter, depth, m = vcfg.hidden_size, vcfg.intermediate_size, vcfg.depth, vcfg.spatial_merge_size
    num_full = len(vcfg.fullatt_block_indexes)
    upw = vcfg.window_size // m // vcfg.patch_size
    patches = sum(t * h * w for t, h, w in grids)
    in_dim = vcfg.in_channels * vcfg.temporal_patch_size * vcfg.patch_size ** 2
    window_sq = sum(size * size * n for g in grids for size, n in window_sizes(g, m, upw))
    frame_sq = sum(t * (h * w) ** 2 for t, h, w in grids)
    parts = {
        "patch_embed": 2.0 * patches * in_dim * c,
        "block_gemms": depth * 2.0 * patches * (3 * c * c + c * c + 3 * c * inter),
        "attn_window": (depth - num_full) * 4.0 * c * window_sq,  # QK^T and PV, all heads
        "attn_full": num_full * 4.0 * c * frame_sq,
        "merger": 2.0 * patches / m ** 2 * (m ** 2 * c) * (m ** 2 * c + vcfg.out_hidden_size),
    }
    parts["total"] = sum(parts.values())
    return parts


def count_bytes(vcfg, grids, elem: int = 2) -> dict[str, float]:
    """HBM bytes with every elementwise op fused: all reads/writes, and the part GEMMs do not hide."""
    c, inter, depth = vcfg.hidden_size, vcfg.intermediate_size, vcfg.depth
    head_dim = c // vcfg.num_heads
    patches = sum(t * h * w for t, h, w in grids)
    rope = 2 * (head_dim // 2) * 4  # float32 cos + sin per row
    # qkv 4C, rotary 4C, attention 4C, proj 2C, add+norm 4C, gate/up C+2I, swiglu 3I, down I+C, add+norm 4C
    per_row = (24 * c + 6 * inter) * elem + rope
    elementwise = (12 * c + 3 * inter) * elem + rope  # rotary, two add+norms, swiglu
    weights = depth * (4 * c * c + 3 * c * inter) * elem
    return {"total": depth * patches * per_row + weights, "elementwise": depth * patches * elementwise}


def predict_hf_seconds(vcfg, grids, flops: float, matmul_tflops: float) -> float:
    """HF's sdpa path: one attention call per window / temporal grid, each ~35 us, plus compute."""
    m, upw = vcfg.spatial_merge_size, vcfg.window_size // vcfg.spatial_merge_size // vcfg.patch_size
    num_full = len(vcfg.fullatt_block_indexes)
    num_windows = sum(n for g in grids for _, n in window_sizes(g, m, upw))
    calls = (vcfg.depth - num_full) * num_windows + num_full * sum(t for t, _, _ in grids)
    return calls * HF_SECONDS_PER_ATTENTION_CALL + flops / (0.5 * matmul_tflops * 1e12)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device, repeats: int = 4) -> float:
    """Median of `repeats` synchronised runs after one warm-up (micro-benchmarks only)."""
    times = []
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def measure_rates(device, dtype, matmul_n: int, copy_bytes: int) -> dict[str, float]:
    """bf16 (or `dtype`) n^3 matmul TFLOP/s and copy GB/s (bytes read + written)."""
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
    b = torch.randn_like(a)
    src = torch.empty(copy_bytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return {"matmul_tflops": 2.0 * matmul_n ** 3 / median_seconds(lambda: a @ b, device) / 1e12,
            "bandwidth_gbs": copy_bytes / median_seconds(lambda: dst.copy_(src), device) / 1e9}


def log(message: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(message)


def barrier(device) -> None:
    if dist.is_initialized():
        dist.barrier(device_ids=[device.index]) if device.type == "cuda" else dist.barrier()


def max_over_ranks(values: list[float], device) -> list[float]:
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def time_runs(fn, warmup: int, repeats: int, device) -> dict:
    """Median wall time of `repeats` runs (slowest rank each), peak memory; OOM is reported, not raised."""
    out, times, warmups, is_oom = None, [], [], False
    for index in range(warmup + repeats):
        if index == warmup and device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        out = None
        barrier(device)
        start = time.perf_counter()
        try:
            out = fn()
        except torch.OutOfMemoryError:
            is_oom = True
        sync(device)
        elapsed = time.perf_counter() - start
        barrier(device)
        (times if index >= warmup else warmups).append(elapsed)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else float("nan")
    warmups, (*runs, oom_flag, peak) = (max_over_ranks(warmups, device),
                                        max_over_ranks([*times, float(is_oom), peak], device))
    return {"seconds": statistics.median(runs) if runs else float("nan"), "runs": runs, "warmup_runs": warmups,
            "is_oom": bool(oom_flag), "peak_gib": peak, "out": out}


def build_tower(size: str, device, dtype, seed: int):
    """HF vision tower with random weights, built directly on `device`."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    vcfg = qwen2_5_vl_config(size).vision_config
    vcfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        return Qwen2_5_VisionTransformerPretrainedModel._from_config(vcfg, dtype=dtype).eval()


def rank_grids(grids, merge: int, rank: int, world_size: int):
    """This rank's consecutive, patch-balanced share of the temporal grids (HF's grid rows)."""
    units = plan_vision_units(list(grids), merge)
    start, stop = assign_units(units, world_size)[rank]
    return canonical_grids([(1, u.grid_h, u.grid_w) for u in units[start:stop]]) if stop > start else ()


def pick_backends(fast: FastQwen25Vision, grids, device, dtype) -> dict[str, list[str] | None]:
    """Time each SDPA backend on the real window and full-attention shapes (v strided as in the tower);
    per kind the fastest goes first, the others stay allowed as fallbacks for shapes it rejects."""
    layout, chosen = fast.layout(grids), {}
    heads, head_dim = fast.num_heads, fast.hidden // fast.num_heads
    for kind, max_seqs in (("window", 4096), ("natural", 2)):
        group = getattr(layout, kind).groups.groups[0]
        count = min(group.num_seqs, max_seqs)
        qkv = torch.randn(count * group.length, 3, heads, head_dim, device=device, dtype=dtype)
        q, k, v = qkv[:, 0].contiguous(), qkv[:, 1].contiguous(), qkv[:, 2]
        sub = plan_varlen_groups(torch.arange(count + 1) * group.length, device)
        # the Triton kernels compete too (window kernel for windows, flash kernel for full attention)
        is_triton = device.type == "cuda" and triton_windows_available()
        timed = []
        for backends in BACKEND_CHOICES + ((["triton"],) if is_triton else ()):
            def attend(q=q, k=k, v=v, sub=sub, backends=backends):
                return varlen_attention(q, k, v, None, scale=fast.scale, groups=sub, backends=backends,
                                        use_flash=False)
            try:
                seconds = median_seconds(attend, device, repeats=3)
            except Exception as error:  # noqa: BLE001 - this backend cannot run (or compile) this shape / dtype
                log(f"  attention {kind} L={group.length}: {backends[0]} unavailable ({str(error)[:80]})")
                continue
            tflops = 4.0 * count * group.length ** 2 * heads * head_dim / seconds / 1e12
            log(f"  attention {kind:7} L={group.length:6} x{count:5}: {backends[0]:>9} {seconds * 1e3:8.2f} ms "
                f"{tflops:7.1f} TFLOP/s")
            timed.append((seconds, backends[0]))
        chosen[kind] = [name for _, name in sorted(timed)] or None
    return chosen


def parse_flash_config(text: str):
    """'default' -> None; 'BLOCK_M,BLOCK_N,WARPS,STAGES[,tma]' -> spava_kernels.flash_attention.Config (the
    Triton kernel); 'sm90:BLOCK_M,BLOCK_N,STAGES,WARPS,CONSUMERS,CTAS_PER_SM[,serial|,pingpong]' ->
    spava_kernels.flash_attention_sm90.Config (the Gluon kernel; serial: no softmax / P V overlap; pingpong:
    the two consumers take turns issuing matmuls)."""
    if text == "default":
        return None
    if text.startswith("sm90:"):
        from spava_kernels.flash_attention_sm90 import Config as Sm90Config

        parts = text[5:].split(",")
        if len(parts) not in (6, 7) or parts[6:] not in ([], ["serial"], ["pingpong"]) or not all(
                p.isdigit() for p in parts[:6]):
            raise SystemExit("--flash-configs: want 'sm90:BLOCK_M,BLOCK_N,STAGES,WARPS,CONSUMERS,CTAS_PER_SM"
                             f"[,serial|,pingpong]'; got {text!r}")
        return Sm90Config(*(int(part) for part in parts[:6]), pipelined=parts[6:] != ["serial"],
                          pingpong=parts[6:] == ["pingpong"])
    from spava_kernels.flash_attention import Config

    parts = text.split(",")
    if len(parts) not in (4, 5) or parts[4:] not in ([], ["tma"]) or not all(p.isdigit() for p in parts[:4]):
        raise SystemExit(f"--flash-configs: want 'default' or 'BLOCK_M,BLOCK_N,WARPS,STAGES[,tma]'; got {text!r}")
    return Config(*(int(part) for part in parts[:4]), use_tma=parts[4:] == ["tma"])


def parse_swiglu_config(text: str):
    """'default' -> None; 'BLOCK_M,BLOCK_N,BLOCK_K,GROUP_M,STAGES,WARPS' -> spava_kernels.swiglu_gemm.Config;
    'sm90:' + the same -> spava_kernels.swiglu_gemm_sm90.Config (the Gluon kernel)."""
    if text == "default":
        return None
    is_sm90 = text.startswith("sm90:")
    parts = text[5:].split(",") if is_sm90 else text.split(",")
    if len(parts) != 6 or not all(part.isdigit() for part in parts):
        raise SystemExit("--swiglu-configs: want 'default' or '[sm90:]BLOCK_M,BLOCK_N,BLOCK_K,GROUP_M,STAGES,WARPS'; "
                         f"got {text!r}")
    if is_sm90:
        from spava_kernels.swiglu_gemm_sm90 import Config
    else:
        from spava_kernels.swiglu_gemm import Config
    return Config(*(int(part) for part in parts))


def make_ours(tower, args, grids, device, dtype, is_compiled: bool | None, spec: str) -> FastQwen25Vision:
    """FastQwen25Vision with the SDPA backends that `spec` (one --attn-backends value, then
    "|<--fused-rotary>|<--fused-swiglu>|<--flash-configs>|<--swiglu-configs>") asks for."""
    spec, fused, swiglu, flash, gemm = spec.split("|")
    fast = FastQwen25Vision(tower, compile=is_compiled, mlp_multiple=args.mlp_multiple,
                            fuse_window_rotary=fused != "off",
                            fuse_swiglu={"on": True, "off": False}.get(swiglu),
                            full_kernel_config=parse_flash_config(flash),
                            swiglu_config=parse_swiglu_config(gemm))
    if spec == "auto" and device.type == "cuda" and grids:
        fast.backends = pick_backends(fast, grids, device, dtype)
    elif spec not in ("auto", "default"):
        window, _, full = spec.partition("/")  # "a,b" for both block kinds, "a,b/c,d" windows / full blocks
        fast.backends = {"window": window.split(","), "natural": (full or window).split(",")}
    if "triton" in spec.replace("/", ",").split(",") and not triton_windows_available():
        log("  Triton kernels not importable (PYTHONPATH needs the repo's kernels/): SDPA used")
    return fast


def time_ours(tower, args, grids, rows, device, dtype, spec: str) -> tuple[dict, FastQwen25Vision]:
    """Time FastQwen25Vision; if compiling fails, say why and time it eager."""
    is_compiled = {"auto": None, "on": True, "off": False}[args.compile]
    fast = make_ours(tower, args, grids, device, dtype, is_compiled, spec)
    def encode():  # reads `fast` when called, so the eager fallback below is timed too
        return fast.encode_chunked(rows, grids, args.max_patches_per_chunk)
    if not fast.is_compiled:
        return time_runs(encode, args.warmup, args.repeats, device), fast
    try:
        return time_runs(encode, max(args.warmup, 1), args.repeats, device), fast
    except Exception as error:  # noqa: BLE001 - compiler failures come in many types; fall back to eager
        log(f"  compiled run failed ({type(error).__name__}: {str(error)[:300]}); timing eager instead")
        fast = make_ours(tower, args, grids, device, dtype, False, spec)
        return time_runs(encode, args.warmup, args.repeats, device), fast


def profile_ours(fast, rows, grids, args, device) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fast.encode_chunked(rows, grids, args.max_patches_per_chunk)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25))


def describe_case(flops: dict, moved: dict, rates: dict, world_size: int) -> None:
    seconds = flops["total"] / (rates["matmul_tflops"] * 1e12) + moved["elementwise"] / (rates["bandwidth_gbs"] * 1e9)
    log(f"  {flops['total'] / 1e15:.3f} PFLOP, {moved['total'] / 1e12:.2f} TB moved if fused "
        f"({moved['elementwise'] / 1e12:.2f} TB by elementwise ops); FLOPs at the matmul rate + elementwise "
        f"bytes at the copy rate: {seconds / world_size:.3f} s per rank")


def hf_result(tower, args, shares, mine, rows, device, rates) -> dict | None:
    """HF's forward within --max-seconds (one cold run, or skipped, when predicted too slow)."""
    vcfg = tower.config
    predicted = max(predict_hf_seconds(vcfg, s, count_flops(vcfg, s)["total"], rates["matmul_tflops"])
                    for s in shares if s)
    warmup, repeats, note = args.warmup, args.repeats, ""
    if predicted * (warmup + repeats) > args.max_seconds:
        if predicted > args.max_seconds:
            log(f"  HF skipped: predicted {predicted:.1f} s > --max-seconds {args.max_seconds:g}")
            return None
        warmup, repeats, note = 0, 1, f"HF: 1 cold run (predicted {predicted:.1f} s)"
    grid_tensor = torch.tensor(mine, device=device).reshape(-1, 3)
    with torch.inference_mode():
        timing = time_runs(lambda: tower(rows, grid_thw=grid_tensor).pooler_output, warmup, repeats, device)
    return {"impl": "hf", "note": note, "predicted_s": predicted, **timing}


def run_case(tower, args, resolution, frames, rank, world_size, device, dtype, rates) -> list[dict]:
    vcfg = tower.config
    height, width = RESOLUTIONS[resolution]
    grids = (get_grid_thw(frames, height, width, QwenProcessorConfig()),)  # one row per video, as HF
    shares = [rank_grids(grids, vcfg.spatial_merge_size, r, world_size) for r in range(world_size)]
    mine = shares[rank]
    patch_dim = vcfg.in_channels * vcfg.temporal_patch_size * vcfg.patch_size ** 2
    rows = torch.randn(sum(t * h * w for t, h, w in mine), patch_dim, device=device, dtype=dtype)
    base = {"size": args.size, "resolution": resolution, "frames": frames, "grid": list(grids[0]),
            "world_size": world_size, "patches": sum(t * h * w for t, h, w in grids),
            "flops": count_flops(vcfg, grids), "bytes": count_bytes(vcfg, grids)}
    describe_case(base["flops"], base["bytes"], rates, world_size)
    results = []
    specs = [f"{spec}|{fused}|{swiglu}|{flash}|{gemm}" for spec in args.attn_backends for fused in args.fused_rotary
             for swiglu in args.fused_swiglu for flash in args.flash_configs for gemm in args.swiglu_configs]
    for index, spec in enumerate(specs if args.impl in ("ours", "both") else []):
        timing, fast = time_ours(tower, args, mine, rows, device, dtype, spec)
        note = (f"compile={fast.is_compiled} warmup={sum(timing['warmup_runs']):.1f}s backends={fast.backends} "
                f"fused_rotary={fast.fuse_window_rotary} fused_swiglu={fast.fuse_swiglu} "
                f"flash_config={spec.split('|')[3]} swiglu_config={spec.split('|')[4]}")
        results.append(dict(impl="ours", note=note, **timing))
        is_first_case = (resolution, frames) == (args.resolutions[0], args.frames[0])
        if args.profile and rank == 0 and index == 0 and is_first_case:
            profile_ours(fast, rows, mine, args, device)
        del fast
    if args.impl in ("hf", "both"):
        results += [r for r in [hf_result(tower, args, shares, mine, rows, device, rates)] if r is not None]
    outs = [r.pop("out") for r in results]
    for result, other in zip(results[1:], outs[1:]):  # every later row against the first 'ours' row
        if outs[0] is not None and other is not None:
            diff = (outs[0].float() - other.float()).abs().max() / other.float().abs().max()
            result["rel_max_diff_vs_ours"] = max_over_ranks([float(diff)], device)[0]
    for result in results:
        result.update(base, tflops=base["flops"]["total"] / result["seconds"] / 1e12 / world_size)  # per GPU
        result["matmul_fraction"] = result["tflops"] / rates["matmul_tflops"]
    return results


def print_header(args, vcfg, device, dtype, rates, world_size) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name} x{world_size}, torch {torch.__version__}, dtype {dtype}, size {args.size}")
    print(f"vision: depth {vcfg.depth} hidden {vcfg.hidden_size} heads {vcfg.num_heads} "
          f"intermediate {vcfg.intermediate_size} out {vcfg.out_hidden_size} window {vcfg.window_size} "
          f"full blocks {vcfg.fullatt_block_indexes}")
    print(f"measured: matmul {rates['matmul_tflops']:.1f} TFLOP/s ({dtype}), copy {rates['bandwidth_gbs']:.0f} GB/s")


def print_table(results: list[dict]) -> None:
    print(f"{'impl':5} {'res':>5} {'frames':>6} {'grid t,h,w':>13} {'patches':>9} {'PFLOP':>6} {'seconds':>8} "
          f"{'TFLOP/s':>8} {'%mm':>5} {'peakGiB':>8}  note (TFLOP/s and %mm per GPU)")
    for r in results:
        grid, seconds = ",".join(str(x) for x in r["grid"]), "OOM" if r["is_oom"] else f"{r['seconds']:.3f}"
        extra = f" diff={r['rel_max_diff_vs_ours']:.2e}" if "rel_max_diff_vs_ours" in r else ""
        print(f"{r['impl']:5} {r['resolution']:>5} {r['frames']:>6} {grid:>13} {r['patches']:>9} "
              f"{r['flops']['total'] / 1e15:6.3f} {seconds:>8} {r['tflops']:8.1f} {100 * r['matmul_fraction']:5.1f} "
              f"{r['peak_gib']:8.2f}  {r['note']}{extra}")


def run(args) -> list[dict]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world_size > 1:
        is_cuda = device.type == "cuda"
        dist.init_process_group("nccl" if is_cuda else "gloo", device_id=device if is_cuda else None)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    matmul_n = args.matmul_size or (8192 if device.type == "cuda" else 512)
    rates = measure_rates(device, dtype, matmul_n, 2 ** 31 if device.type == "cuda" else 2 ** 26)
    tower = build_tower(args.size, device, dtype, args.seed)
    if rank == 0:
        print_header(args, tower.config, device, dtype, rates, world_size)
    results = []
    for resolution in args.resolutions:
        for frames in args.frames:
            log(f"case {resolution}p {frames} frames")
            results += run_case(tower, args, resolution, frames, rank, world_size, device, dtype, rates)
    if rank == 0:
        print_table(results)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump({"args": vars(args), "rates": rates, "results": results}, handle, indent=1)
    if world_size > 1 and "SPAVA_SPAWNED_RANK" not in os.environ:  # torchrun: plain teardown
        dist.destroy_process_group()
    return results


def _spawned(rank: int, argv: list[str], world_size: int, port: int) -> None:
    from spava.comm.collectives import end_spawned_rank

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), SPAVA_SPAWNED_RANK="1")
    args = parse_args(argv)
    if args.device == "cpu":  # ranks share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    run(args)
    end_spawned_rank()  # barrier, leave the group, exit without teardown (gloo threads can abort at exit)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; returns rank 0's results (spawned runs return [])."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.world_size > 1 and "WORLD_SIZE" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        torch.multiprocessing.spawn(_spawned, args=(argv, args.world_size, port), nprocs=args.world_size)
        return []
    return run(args)


if __name__ == "__main__":
    main()
