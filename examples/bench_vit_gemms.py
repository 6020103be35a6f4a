"""Time the ViT block's four GEMMs in the layouts and epilogues cuBLAS could be given (one GPU).

FastQwen25Vision runs each block's GEMMs as `F.linear(x, W, b)` on `[P, K]` rows. cuBLAS picks its
kernel per shape, layout and epilogue, and some picks run well below the matmul rate (profile of the
7B tower at 1440p: gate/up at ~680 TFLOP/s, down at ~600, qkv/proj at ~780). This script times, at
the real shapes, what the block could call instead, all computing the same product:

* `linear+bias`: F.linear(x, W, b) (today); `linear`: no bias (added in the next elementwise kernel);
* `mm W^T`: x @ W^T with W^T stored `[K, N]` contiguous; `addmm W^T`: the bias as addmm's input;
* `addmm residual`: r + x @ W^T (beta = 1: the residual add in the GEMM epilogue);
* `halves`: gate and up as two GEMMs of N / 2 (gate/up only).

    PYTHONPATH=. python examples/bench_vit_gemms.py [--rows 297024] [--repeats 10]

Measured on an H200 (2026-11-21): no variant beat F.linear for qkv and gate/up; `addmm W^T` was
faster for down in isolation (4.01 vs 4.44 ms) but not inside the tower (4.30 ms either way, same
cuBLAS kernel), and the residual epilogue was slower (proj 1.88 vs 1.50 ms), so FastQwen25Vision
keeps F.linear and fuses gate/up with SwiGLU in Triton instead (`spava_kernels.swiglu_gemm`).

Rows default to one chunk of the 7B tower at 1440p, 64 frames (two chunks of 297,024 patches).
Timing: CUDA events around each call, two warm-up calls, median of `--repeats`.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from bench_kernels import time_ms  # examples/ is on sys.path when run as a script


def variants(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, is_gate_up: bool, is_residual: bool):
    """name -> callable, each computing x @ weight^T (+ bias) `[M, N]` one way."""
    weight_t = weight.t().contiguous()
    cases = {
        "linear+bias": lambda: F.linear(x, weight, bias),
        "linear": lambda: F.linear(x, weight),
        "mm W^T": lambda: torch.mm(x, weight_t),
        "addmm W^T": lambda: torch.addmm(bias, x, weight_t),
    }
    if is_residual:
        residual = torch.randn(x.shape[0], weight.shape[0], device=x.device, dtype=x.dtype)
        cases["addmm residual"] = lambda: torch.addmm(residual, x, weight.t())
        cases["addmm residual W^T"] = lambda: torch.addmm(residual, x, weight_t)
    if is_gate_up:
        half = weight.shape[0] // 2
        gate, up = weight[:half], weight[half:]
        cases["halves+bias"] = lambda: (F.linear(x, gate, bias[:half]), F.linear(x, up, bias[half:]))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=297_024)
    parser.add_argument("--hidden", type=int, default=1280)
    parser.add_argument("--intermediate", type=int, default=3456, help="MLP width (3420 padded to 64)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    rows, hidden, inter = args.rows, args.hidden, args.intermediate
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, bf16, M = {rows}")
    shapes = [("qkv", hidden, 3 * hidden, False, False), ("proj", hidden, hidden, False, True),
              ("gate_up", hidden, 2 * inter, True, False), ("down", inter, hidden, False, True)]
    for name, k_dim, n_dim, is_gate_up, is_residual in shapes:
        x = torch.randn(rows, k_dim, device=device, dtype=dtype)
        weight = torch.randn(n_dim, k_dim, device=device, dtype=dtype) * k_dim ** -0.5
        bias = torch.randn(n_dim, device=device, dtype=dtype)
        flops = 2 * rows * k_dim * n_dim
        print(f"{name}: [{rows}, {k_dim}] x [{k_dim}, {n_dim}], {flops / 1e12:.2f} TFLOP")
        for case, fn in variants(x, weight, bias, is_gate_up, is_residual).items():
            ms = time_ms(fn, args.repeats, warmup=2, flush=None)
            print(f"  {case:20} {ms:7.3f} ms  {flops / ms / 1e9:6.0f} TFLOP/s")
        del x, weight, bias


if __name__ == "__main__":
    main()
