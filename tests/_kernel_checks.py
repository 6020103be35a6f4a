"""Shared checks of the ViT kernels (`spava_kernels` window / flash attention, SwiGLU GEMM) and the
helpers of every kernel check, used by `test_kernels.py` on CPU (Triton's interpreter) and CUDA.
Same tolerance rule as there: error vs a float64 truth <= 2x the torch reference's in the same dtype."""

from __future__ import annotations

import torch

from spava_kernels import dispatch, reference


def _randn(shape, device, seed, scale=1.0):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(device)


def _slack(dtype, truth, interpreted):
    """One bf16 ulp of the largest value when the interpreter truncates, else a tiny epsilon."""
    if interpreted and dtype == torch.bfloat16:
        return float(truth.abs().max()) * 2.0 ** -7
    return 1e-6 * max(1.0, float(truth.abs().max()))


def _window_inputs(device, dtype, lengths, num_heads, dim, seed=50):
    """Strided q, k, v `[T, H, D]` views of one packed qkv `[T, 3, H, D]` (as the ViT's), values exactly
    representable in `dtype`, and cu_seqlens `[S + 1]` int32."""
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    qkv = _randn((int(cu[-1]), 3, num_heads, dim), device, seed).to(dtype)
    return qkv[:, 0], qkv[:, 1], qkv[:, 2], cu


def _rotary_tables(num_tokens, dim, device, seed=60):
    """cos, sin `[T, D/2]` float32 of random angles (as the ViT's per-row tables)."""
    angles = _randn((num_tokens, dim // 2), device, seed, scale=3.0).float()
    return angles.cos(), angles.sin()


def check_window_attention(device, dtype, lengths, num_heads, dim, interpreted=False, impl="triton", config=None,
                           rotary=False):
    """Kernel vs a float64 truth of the dtype-rounded inputs: error <= 2x the torch reference's error in
    `dtype` (computed in float32, rounded once, like SDPA's math backend); written into a row/head
    view of a bigger buffer, which must stay untouched elsewhere. rotary: q, k rotated on load
    (truth: rotated in float64; the same-dtype reference rotates in float32 and rounds, as HF)."""
    q, k, v, cu = _window_inputs(device, dtype, lengths, num_heads, dim)
    tables = _rotary_tables(q.shape[0], dim, device) if rotary else None
    max_seqlen, scale = max(lengths), 1.3 * dim ** -0.5  # a little sharper than usual
    wide = [x.double() for x in (q, k)]
    if tables is not None:
        wide = [reference.rotate_half(x, *tables) for x in wide]
        same = [reference.rotate_half(x, *tables) for x in (q, k)]
    else:
        same = [q, k]
    truth = dispatch.window_attention_reference(*wide, v.double(), cu, max_seqlen, scale)
    same_dtype = dispatch.window_attention_reference(*same, v, cu, max_seqlen, scale)
    big = torch.zeros((q.shape[0] + 3, 2 * num_heads, dim), dtype=dtype, device=device)
    if config is None:
        out = dispatch.window_attention(q, k, v, cu, max_seqlen, scale, out=big[2:-1, ::2], impl=impl, rotary=tables)
    else:  # the Triton module directly, with a launch config of the kernel's sweep
        from spava_kernels.window_attention import Config, window_attention

        out = window_attention(q, k, v, cu, max_seqlen, scale, out=big[2:-1, ::2], config=Config(*config),
                               rotary=tables)
    assert out.data_ptr() == big[2].data_ptr() and out.dtype == dtype
    assert not big[:2].any() and not big[-1:].any() and not big[:, 1::2].any(), "wrote outside out"
    torch_error = float((same_dtype.double() - truth).abs().max())
    error = float((out.double() - truth).abs().max())
    assert error <= 2 * torch_error + _slack(dtype, truth, interpreted), (error, torch_error)
    fresh = dispatch.window_attention(q, k, v, cu, max_seqlen, scale, impl=impl, rotary=tables)  # new, q's dtype
    assert fresh.dtype == dtype and fresh.shape == q.shape and torch.equal(fresh, out)


WINDOW_LENGTHS = [64, 48, 36, 1, 17, 64, 30]  # ViT windows (64, 48, 36) and odd lengths


def check_flash_attention(device, dtype, lengths, num_heads, dim, interpreted=False, impl="triton", config=None,
                          kernel="triton"):
    """Like `check_window_attention`, for the long-sequence kernels (`spava_kernels.flash_attention`, or
    `flash_attention_sm90` when kernel="sm90" with a config tuple): error vs float64 <= 2x the torch
    reference's in `dtype`; writes only into its row/head view."""
    q, k, v, cu = _window_inputs(device, dtype, lengths, num_heads, dim, seed=51)
    max_seqlen, scale = max(lengths), 1.3 * dim ** -0.5
    truth = dispatch.window_attention_reference(q.double(), k.double(), v.double(), cu, max_seqlen, scale)
    same_dtype = dispatch.window_attention_reference(q, k, v, cu, max_seqlen, scale)
    big = torch.zeros((q.shape[0] + 3, 2 * num_heads, dim), dtype=dtype, device=device)
    if config is None:
        out = dispatch.flash_attention(q, k, v, cu, max_seqlen, scale, out=big[2:-1, ::2], impl=impl)
    elif kernel == "sm90":
        from spava_kernels.flash_attention_sm90 import Config, flash_attention_sm90

        out = flash_attention_sm90(q, k, v, cu, max_seqlen, scale, out=big[2:-1, ::2], config=Config(*config))
    else:
        from spava_kernels.flash_attention import Config, flash_attention

        out = flash_attention(q, k, v, cu, max_seqlen, scale, out=big[2:-1, ::2], config=Config(*config))
    assert out.data_ptr() == big[2].data_ptr() and out.dtype == dtype
    assert not big[:2].any() and not big[-1:].any() and not big[:, 1::2].any(), "wrote outside out"
    torch_error = float((same_dtype.double() - truth).abs().max())
    error = float((out.double() - truth).abs().max())
    assert error <= 2 * torch_error + _slack(dtype, truth, interpreted), (error, torch_error)
    fresh = dispatch.flash_attention(q, k, v, cu, max_seqlen, scale, impl=impl)  # default config
    assert fresh.dtype == dtype and fresh.shape == q.shape
    assert config is not None or torch.equal(fresh, out)  # other tile sizes sum in another order


def check_vision_fused_rotary():
    """FastQwen25Vision's window blocks with the window kernel rotating q, k on load (CPU: the kernel
    forced in through `triton_kernel_for`) equal the unfused path and HF's tower (tiny, float32)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from spava.models.qwen2_5_vl import vision_fast
    from spava.models.qwen2_5_vl.presets import qwen2_5_vl_config

    config = qwen2_5_vl_config("tiny").vision_config
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(config, dtype=torch.float32).eval()
    grids = [(2, 10, 14), (1, 6, 4)]
    pixels = _randn((2 * 10 * 14 + 6 * 4, 3 * 2 * 14 * 14), "cpu", 70).float()
    with torch.inference_mode():
        want = tower(pixels, grid_thw=torch.tensor(grids)).pooler_output
    calls = []

    def forced(q, v, backends, max_seqlen):  # the CPU stand-in for "CUDA and Triton importable"
        calls.append(max_seqlen)
        return dispatch.window_attention if backends and backends[0] == "triton" and max_seqlen <= 128 else None

    original = vision_fast.triton_kernel_for
    vision_fast.triton_kernel_for = forced
    try:
        fused = vision_fast.FastQwen25Vision(tower, compile=False, window_backends=["triton"]).encode(pixels, grids)
        unfused = vision_fast.FastQwen25Vision(tower, compile=False, window_backends=["triton"],
                                               fuse_window_rotary=False).encode(pixels, grids)
    finally:
        vision_fast.triton_kernel_for = original
    assert calls, "the fused path was not taken"
    scale = float(want.abs().max())
    assert float((fused - want).abs().max()) <= 1e-5 * scale, float((fused - want).abs().max())
    assert float((fused - unfused).abs().max()) <= 1e-5 * scale


def check_swiglu_gemm(device, dtype, num_rows, k_dim, width, has_bias=True, config=None, impl="triton",
                      kernel="triton"):
    """Kernel vs float64 truth (the reference in float64): error <= 2x the reference's in `dtype` + one
    ulp of the largest output (the epilogue rounds where HF does, so a rounding may flip). kernel="sm90"
    with a config tuple: the Gluon kernel (`spava_kernels.swiglu_gemm_sm90`)."""
    x = _randn((num_rows, k_dim), device, 80).to(dtype)
    weight = (_randn((2 * width, k_dim), device, 81) * k_dim ** -0.5).to(dtype)
    bias = (_randn((2 * width,), device, 82) * 0.1).to(dtype) if has_bias else None
    truth = reference.swiglu_gemm(x.double(), weight.double(), bias.double() if has_bias else None, width)
    same_dtype = reference.swiglu_gemm(x, weight, bias, width)
    if config is None:
        got = dispatch.swiglu_gemm(x, weight, bias, width, impl=impl)
    elif kernel == "sm90":
        from spava_kernels.swiglu_gemm_sm90 import Config, swiglu_gemm_sm90

        got = swiglu_gemm_sm90(x, weight, bias, width, config=Config(*config))
    else:
        from spava_kernels.swiglu_gemm import Config, swiglu_gemm

        got = swiglu_gemm(x, weight, bias, width, config=Config(*config))
    assert got.shape == (num_rows, width) and got.dtype == dtype
    ulp = float(truth.abs().max()) * (2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10)
    torch_error = float((same_dtype.double() - truth).abs().max())
    error = float((got.double() - truth).abs().max())
    assert error <= 2 * torch_error + ulp, (error, torch_error)


FLASH_LENGTHS = [300, 1, 77, 128, 129, 64]  # partial and exact tiles, a single row
