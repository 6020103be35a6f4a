"""Shared timing loop of the kernels' `python -m spava_kernels.<kernel>` launch-config sweeps (CUDA)."""

from __future__ import annotations

from typing import Callable, Optional

import torch


def time_cases(cases: list[tuple[str, Callable[[], torch.Tensor]]], want: Optional[torch.Tensor],
               work: float, unit: str, rep_ms: int = 200) -> None:
    """Print each case's median time (triton.testing.do_bench), `work` per second in `unit`
    ("GB/s": work in bytes, "TFLOP/s": in FLOPs) and max |output - want| (None or a non-tensor
    result: no error column). A case that fails to compile or launch is reported and skipped."""
    from triton.testing import do_bench

    scale = {"GB/s": 1e6, "TFLOP/s": 1e9}[unit]
    for name, fn in cases:
        try:
            ms = do_bench(fn, warmup=25, rep=rep_ms)
            got = fn()
        except Exception as error:  # noqa: BLE001 - a config that does not compile / fit: report and go on
            print(f"  {name:36} failed: {type(error).__name__}: {str(error)[:160]}")
            continue
        is_checked = want is not None and isinstance(got, torch.Tensor) and got.shape == want.shape
        error = f"  max|diff| {float((got.float() - want.float()).abs().max()):.2e}" if is_checked else ""
        print(f"  {name:36} {ms * 1e3:9.1f} us  {work / ms / scale:7.0f} {unit}{error}")


def batched_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_seqs: int, backend: str) -> torch.Tensor:
    """Baseline of the sweeps: `num_seqs` equal-length sequences packed as q, k, v `[T, H, D]`
    (T = num_seqs * length), attended one by one (no mask) by torch's SDPA restricted to `backend`
    ("cudnn" or "math"). Returns `[T, H, D]`."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[backend]
    def batched(x):  # [T, H, D] -> [B, H, L, D]
        return x.reshape(num_seqs, -1, *x.shape[1:]).transpose(1, 2)
    with sdpa_kernel([chosen]):
        out = torch.nn.functional.scaled_dot_product_attention(batched(q), batched(k), batched(v))
    return out.transpose(1, 2).reshape(q.shape)


def attention_sweep_args(description: str) -> tuple[int, int, int, int]:
    """Command line of the flash kernels' sweeps: (sequences, tokens per sequence, heads, head_dim), by
    default the 7B ViT's full-attention shapes at 1440p."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seqs", type=int, default=16, help="temporal grids (7B, 1440p 64f: 2 chunks of 16)")
    parser.add_argument("--length", type=int, default=18564, help="patches per grid (1440p: 102 x 182)")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=80)
    cli = parser.parse_args()
    return cli.seqs, cli.length, cli.heads, cli.dim


def swiglu_sweep_args(description: str) -> tuple[int, int, int]:
    """Command line of the SwiGLU GEMMs' sweeps: (rows, hidden, width), by default a 7B ViT chunk at 1440p."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", type=int, default=297_024)
    parser.add_argument("--hidden", type=int, default=1280)
    parser.add_argument("--width", type=int, default=3456)
    cli = parser.parse_args()
    return cli.rows, cli.hidden, cli.width
