"""Benchmark the Qwen3-VL vision tower: spava's `FastQwen3Vision` against HF transformers' forward.

Random weights of the size's tower built on the device, random pixel rows of one video grid
(default: 64 frames of 2560x1440 at patch 16, temporal patch 2: grid 32 x 90 x 160, 460,800
patches), warm-up excluded, CUDA-synchronised, median of repeats, both in one run; the outputs'
largest difference is printed next to the output's scale.

    python examples/bench_vit_qwen3.py --size 8b --grid 32 90 160
    python examples/bench_vit_qwen3.py --size tiny --device cpu --dtype float32 --grid 2 8 8   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from spava.models.qwen3_vl.model import Qwen3VL
from spava.models.qwen3_vl.presets import qwen3_vl_config
from spava.models.qwen3_vl.vision_fast import FastQwen3Vision

PATCH_DIM = 3 * 2 * 16 * 16


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="8b", help="Qwen3-VL preset: 2b 4b 8b 32b tiny")
    parser.add_argument("--grid", type=int, nargs=3, default=[32, 90, 160], metavar=("T", "H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--json", default=None, help="write the results here")
    return parser.parse_args(argv)


def _median_seconds(fn, device: torch.device, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def main(argv=None) -> int:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = Qwen3VL.from_config(qwen3_vl_config(args.size), dtype=dtype, device=device, parts=("vision",))
    visual = model.hf.model.visual
    grid = torch.tensor([args.grid])
    num_patches = args.grid[0] * args.grid[1] * args.grid[2]
    pixels = torch.randn(num_patches, PATCH_DIM, device=device, dtype=dtype,
                         generator=torch.Generator(device=device).manual_seed(0))
    fast = FastQwen3Vision(visual)

    def hf_forward():
        out = visual(pixels, grid_thw=grid.to(device), return_dict=True)
        return torch.cat([out.pooler_output, *out.deepstack_features], dim=1)

    def fast_forward():
        return fast.encode(pixels, grid)

    difference = (hf_forward().float() - fast_forward().float()).abs().max().item()
    scale = hf_forward().float().abs().max().item()
    results = {"size": args.size, "grid": args.grid, "num_patches": num_patches, "dtype": args.dtype,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "repeats": args.repeats, "warmup": args.warmup,
               "date": time.strftime("%Y-%m-%d"),
               "hf_s": _median_seconds(hf_forward, device, args.repeats, args.warmup),
               "spava_s": _median_seconds(fast_forward, device, args.repeats, args.warmup),
               "max_abs_difference": difference, "output_scale": scale}
    if device.type == "cuda":
        results["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(f"Qwen3-VL {args.size} vision tower, grid {args.grid} ({num_patches} patches), {args.dtype}, "
          f"{results['device']}: HF {results['hf_s']:.3f} s, spava {results['spava_s']:.3f} s "
          f"({results['hf_s'] / results['spava_s']:.2f}x); outputs differ by at most {difference:.3g} "
          f"(scale {scale:.3g})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
