"""FastQwen25Vision and varlen_attention against HF's Qwen2.5-VL vision tower (tiny random weights, CPU),
the benchmark script on CPU, and one GPU check at Qwen2.5-VL-7B vision size (skipped without CUDA)."""

from __future__ import annotations

import importlib
import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from spava.models.qwen2_5_vl.presets import qwen2_5_vl_config
from spava.models.qwen2_5_vl.vision_fast import FastQwen25Vision, canonical_grids, plan_chunks
from spava.models.varlen_attention import grouped_attention, plan_varlen_groups, varlen_attention

PATCH_DIM = 3 * 2 * 14 * 14
BENCH = Path(__file__).resolve().parents[1] / "examples" / "bench_vit.py"

# tiny: 2x2-merge-unit windows (16 patches); odd unit counts leave edge windows of 8 and 4 patches.
GRID_SETS = [
    [(2, 10, 14)],
    [(4, 6, 22)],
    [(1, 8, 8)],
    [(1, 2, 30), (3, 2, 2)],
    [(2, 10, 14), (1, 8, 8), (4, 6, 22), (2, 10, 14), (1, 6, 4)],
]


def _sharpen(tower, seed: int) -> None:
    """Weights large enough that attention is far from uniform, so a wrong window or order shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in tower.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            if param.ndim == 1 and ("norm" in name or "ln_q" in name):
                param.copy_(1 + 0.2 * noise)
            elif param.ndim == 1:
                param.copy_(0.1 * noise)
            else:
                param.copy_(1.5 * noise / math.sqrt(param[0].numel()))


def _tower(dtype=torch.float64, seed: int = 0, **vision_overrides):
    config = qwen2_5_vl_config("tiny").vision_config
    for key, value in vision_overrides.items():
        setattr(config, key, value)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(config, dtype=dtype).eval()
    _sharpen(tower, seed)
    return tower


def _pixels(grids, dtype=torch.float64, seed: int = 1) -> torch.Tensor:
    num_patches = sum(t * h * w for t, h, w in grids)
    return torch.randn(num_patches, PATCH_DIM, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@torch.inference_mode()
def _hf(tower, pixels, grids) -> torch.Tensor:
    return tower(pixels, grid_thw=torch.tensor(grids, device=pixels.device)).pooler_output


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and immune to other processes' load on a small machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tower64():
    return _tower(torch.float64)


@pytest.mark.parametrize("grids", GRID_SETS, ids=str)
def test_float64_equals_hf(tower64, grids):
    pixels = _pixels(grids)
    ref = _hf(tower64, pixels, grids)
    out = FastQwen25Vision(tower64).encode(pixels, torch.tensor(grids))
    assert out.shape == (pixels.shape[0] // 4, tower64.config.out_hidden_size)
    assert (out - ref).abs().max().item() <= 1e-10 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("grids", GRID_SETS[::2], ids=str)
def test_float32_equals_hf(grids):
    tower = _tower(torch.float32, seed=3)
    pixels = _pixels(grids, torch.float32)
    ref = _hf(tower, pixels, grids)
    out = FastQwen25Vision(tower).encode(pixels, grids)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("intermediate, multiple", [(50, 64), (50, 1), (64, 48)])
def test_mlp_padding_is_exact(intermediate, multiple):
    tower = _tower(torch.float64, seed=5, intermediate_size=intermediate)
    grids = GRID_SETS[4]
    pixels = _pixels(grids)
    fast = FastQwen25Vision(tower, mlp_multiple=multiple)
    assert fast.blocks[0].width % multiple == 0 and fast.blocks[0].width >= intermediate
    ref = _hf(tower, pixels, grids)
    assert (fast.encode(pixels, grids) - ref).abs().max().item() <= 1e-10 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("max_patches", [1, 150, 333, 700, 10**9])
def test_chunked_equals_unchunked(tower64, max_patches):
    grids = GRID_SETS[4]
    pixels = _pixels(grids)
    fast = FastQwen25Vision(tower64)
    whole = fast.encode(pixels, grids)
    chunked = fast.encode_chunked(pixels, grids, max_patches)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


def test_plan_chunks_split_at_temporal_grids():
    grids = [(3, 10, 14), (2, 8, 8), (1, 6, 22)]
    chunks = plan_chunks(grids, 300)
    assert chunks[0][0] == 0 and chunks[-1][1] == sum(t * h * w for t, h, w in grids)
    for (start, stop, chunk_grids), following in zip(chunks, chunks[1:] + [None], strict=True):
        assert stop - start == sum(t * h * w for t, h, w in chunk_grids) <= 300
        assert following is None or following[0] == stop
    frames = [(h, w) for _, _, grid in chunks for t, h, w in grid for _ in range(t)]
    assert frames == [(h, w) for t, h, w in grids for _ in range(t)]
    assert plan_chunks([(2, 30, 30)], 100) == [(0, 900, ((1, 30, 30),)), (900, 1800, ((1, 30, 30),))]


def test_layout_windows_are_contiguous_views_and_cached(tower64):
    fast = FastQwen25Vision(tower64, max_cached_layouts=2)
    layout = fast.layout(GRID_SETS[4])
    assert all(group.index is None for group in layout.window.groups.groups)
    assert [g.length for g in layout.window.groups.groups] == [16, 8, 4]
    assert fast.layout(torch.tensor(GRID_SETS[4])) is layout
    assert canonical_grids([(1, 8, 8), (2, 8, 8), (1, 6, 4)]) == ((3, 8, 8), (1, 6, 4))
    fast.layout(GRID_SETS[0])
    fast.layout(GRID_SETS[1])
    assert len(fast._layouts) == 2


def _loop_reference(q, k, v, cu_seqlens, scale=None):
    outs = []
    for start, stop in itertools.pairwise(cu_seqlens):
        q_s, k_s, v_s = (x[start:stop].transpose(0, 1) for x in (q, k, v))
        weights = torch.softmax((q_s @ k_s.transpose(1, 2)) * (scale or q.shape[-1] ** -0.5), dim=-1)
        outs.append((weights @ v_s).transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("lengths", [[16, 16, 16], [5, 16, 16, 0, 7, 16, 5, 3, 16], [1], [9, 4, 9, 4, 9]])
def test_varlen_attention_equals_loop(lengths):
    cu = [0]
    for length in lengths:
        cu.append(cu[-1] + length)
    generator = torch.Generator().manual_seed(len(lengths))
    q, k, v = (torch.randn(cu[-1], 3, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    ref = _loop_reference(q, k, v, cu, scale=0.3)
    torch.testing.assert_close(varlen_attention(q, k, v, cu, scale=0.3), ref, rtol=0, atol=1e-12)
    groups = plan_varlen_groups(torch.tensor(cu, dtype=torch.int32))
    assert sorted(g.length for g in groups.groups) == sorted({length for length in lengths if length})
    batched = grouped_attention(q, k, v, groups, scale=0.3, max_seqs_per_call=2)
    torch.testing.assert_close(batched, ref, rtol=0, atol=1e-12)
    strided = torch.cat([q, k, v], dim=1)  # q/k/v as strided views, as the vision tower passes v
    out = varlen_attention(strided[:, :3], strided[:, 3:6], strided[:, 6:], None, scale=0.3, groups=groups)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_varlen_attention_rejects_bad_input():
    q = torch.randn(10, 2, 4)
    with pytest.raises(ValueError):
        varlen_attention(q, q, q, [0, 6, 4])
    with pytest.raises(ValueError):
        varlen_attention(q, q, q, [0, 4, 8])
    with pytest.raises(ValueError):
        varlen_attention(q, q, q, [0, 10], backends=["nonsense"])


def _bench_module():
    """examples/bench_vit.py as module `bench_vit` (importable by name, so spawned ranks can unpickle)."""
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))
    return importlib.import_module("bench_vit")


def test_bench_runs_on_cpu(tmp_path):
    bench = _bench_module()
    out_json = tmp_path / "out.json"
    results = bench.main(["--size", "tiny", "--device", "cpu", "--dtype", "fp32", "--resolutions", "360",
                          "--frames", "4", "--repeats", "1", "--warmup", "0", "--impl", "both",
                          "--max-patches-per-chunk", "1500", "--matmul-size", "64", "--json", str(out_json)])
    assert [r["impl"] for r in results] == ["ours", "hf"]
    assert results[0]["grid"] == [2, 26, 46] and results[0]["patches"] == 2 * 26 * 46
    assert results[1]["rel_max_diff_vs_ours"] < 1e-4
    assert json.loads(out_json.read_text())["results"][0]["flops"]["total"] > 0


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="the kernel Config needs Triton")
def test_bench_flash_config_parsing():
    bench = _bench_module()
    assert bench.parse_flash_config("default") is None
    assert tuple(bench.parse_flash_config("128,64,4,3,tma")) == (128, 64, 4, 3, True)
    assert bench.parse_flash_config("64,32,4,1").use_tma is False
    for bad in ("128,64,4", "128,64,4,3,ws", "128,x,4,3", "sm90:64,128,2,4,2", "sm90:64,128,2,4,2,1,ws"):
        with pytest.raises(SystemExit, match="BLOCK_M,BLOCK_N"):
            bench.parse_flash_config(bad)
    pytest.importorskip("triton.experimental.gluon")
    assert tuple(bench.parse_flash_config("sm90:64,128,2,4,2,1")) == (64, 128, 2, 4, 2, 1, True, False)
    assert bench.parse_flash_config("sm90:64,128,2,4,2,1,pingpong").pingpong is True
    assert bench.parse_flash_config("sm90:128,64,2,4,1,2,serial").pipelined is False
    assert bench.parse_swiglu_config("default") is None
    assert tuple(bench.parse_swiglu_config("128,128,64,8,4,8")) == (128, 128, 64, 8, 4, 8)
    assert type(bench.parse_swiglu_config("sm90:128,128,64,8,3,8")).__module__ == "spava_kernels.swiglu_gemm_sm90"
    with pytest.raises(SystemExit, match="GROUP_M"):
        bench.parse_swiglu_config("sm90:128,128,64")


def test_bench_flop_count_matches_notes():
    bench = _bench_module()
    vision = qwen2_5_vl_config("7b").vision_config
    flops = bench.count_flops(vision, [(32, 102, 182)])
    assert 0.95e15 < flops["total"] < 1.05e15
    assert bench.window_sizes((1, 102, 182), 2, 4) == [(64, 264), (48, 34), (36, 1)]


@pytest.mark.slow
def test_bench_frame_parallel_on_cpu(tmp_path):
    out_json = tmp_path / "dist.json"
    _bench_module().main(["--size", "tiny", "--device", "cpu", "--resolutions", "360", "--frames", "6",
                          "--dtype", "fp32", "--matmul-size", "64", "--repeats", "1", "--warmup", "0", "--impl", "ours",
                          "--world-size", "2",
                          "--json", str(out_json)])
    result = json.loads(out_json.read_text())["results"][0]
    assert result["world_size"] == 2 and result["seconds"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("is_compiled", [False, True])
def test_bf16_at_7b_size_is_as_accurate_as_hf(is_compiled):
    """Flash-attention-style rule: max error vs an fp32 reference <= 2x that of HF's own bf16 forward."""
    config = qwen2_5_vl_config("7b").vision_config
    config._attn_implementation = "sdpa"
    grids = [(2, 36, 64), (1, 26, 46)]
    torch.manual_seed(0)
    with torch.device("cuda"):
        tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(config, dtype=torch.float32).eval()
    pixels = _pixels(grids, torch.float32).cuda()
    is_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref = _hf(tower, pixels, grids).float()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = is_tf32
    inv_freq = tower.rotary_pos_emb.inv_freq.clone()
    tower.to(torch.bfloat16)
    tower.rotary_pos_emb.inv_freq = inv_freq  # both bf16 runs keep float32 rotary frequencies
    hf_error = (_hf(tower, pixels.bfloat16(), grids).float() - ref).abs().max().item()
    ours = FastQwen25Vision(tower, compile=is_compiled).encode(pixels, grids).float()
    ours_error = (ours - ref).abs().max().item()
    assert ours_error <= 2 * hf_error, (ours_error, hf_error)
    chunked = FastQwen25Vision(tower, compile=is_compiled).encode_chunked(pixels, grids, 2 * 36 * 64 // 2)
    assert (chunked.float() - ref).abs().max().item() <= 2 * hf_error


def test_sdpa_view_layout_is_blhd_reshape():
    """`_attend_batch`'s reshape relies on q rows being back to back per sequence: check on a toy case."""
    q = torch.randn(2 * 5, 2, 4, dtype=torch.float64)
    groups = plan_varlen_groups([0, 5, 10])
    expected = F.scaled_dot_product_attention(*(q.view(2, 5, 2, 4).transpose(1, 2),) * 3).transpose(1, 2)
    torch.testing.assert_close(grouped_attention(q, q, q, groups), expected.reshape(10, 2, 4))
