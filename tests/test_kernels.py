"""spava_kernels: references against spava, Triton kernels in the interpreter (CPU) and on CUDA.

Tolerance rule (flash-attention's, as in test_gpu.py): max error against a float64 reference <= 2x
the error of the torch reference run in the same dtype, on irregular shapes. Packing is a copy and
is compared exactly; selections are compared by index set (window 1, random data: no ties) or by the
selected reference values (pooled scores tie by construction).

Interpreter tests: TRITON_INTERPRET must be set before the kernels are decorated, and must not leak
into other test modules, so the checks run in one subprocess (this file run as a script) on CPU
tensors. Triton's interpreter casts float32 -> bfloat16 by truncation (the GPU rounds to nearest),
so there a bf16 output may differ by one more bf16 ulp.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from spava.attention.merge import merge_partials_torch_ as merge_partials_, start_accumulator
from spava.attention.scoring import pool_scores, query_aware_scores, select_into
from spava.models.varlen_attention import varlen_attention
from spava_kernels import dispatch, reference

from _kernel_checks import (FLASH_LENGTHS, WINDOW_LENGTHS, _randn, _slack, _window_inputs,
                            check_flash_attention, check_swiglu_gemm, check_vision_fused_rotary,
                            check_window_attention)

NEG_INF = float("-inf")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ---------------------------------------------------------------- shared checks (CPU or CUDA)

def _strided(x, dtype):
    """x `[S, H, D]` as a non-contiguous row-and-head view (rows 3.., every 2nd head) of a bigger tensor."""
    num_rows, num_heads, dim = x.shape
    big = torch.full((num_rows + 5, 2 * num_heads, dim), float("nan"), dtype=dtype, device=x.device)
    view = big[3:num_rows + 3, ::2]
    view.copy_(x)
    return view


def check_merge(device, dtype, dim, interpreted=False, impl="triton"):
    num_rows, num_heads = 333, 7
    out_a, out_b = _randn((num_rows, num_heads, dim), device, 1), _randn((num_rows, num_heads, dim), device, 2)
    lse_a, lse_b = _randn((num_rows, num_heads), device, 3, 6), _randn((num_rows, num_heads), device, 4, 6)
    lse_a[5, 1] = lse_b[9, 2] = lse_a[11, 3] = lse_b[11, 3] = NEG_INF  # empty pieces
    out_a, out_b = out_a.to(dtype).double(), out_b.to(dtype).double()  # inputs exactly representable
    out_b[9, 2] = float("nan")  # an empty piece's output is ignored
    truth, truth_lse = reference.merge_two(out_a, lse_a, out_b, lse_b)
    pieces = (_strided(out_a, dtype), lse_a.float(), _strided(out_b, dtype), lse_b.float())
    same_dtype, _ = reference.merge_two(*pieces, out=torch.empty_like(pieces[0]))
    dest = torch.zeros((num_rows + 4, num_heads, dim), dtype=dtype, device=device)
    out, lse = dispatch.merge_two(*pieces, out=dest[2:num_rows + 2], impl=impl)
    assert out.data_ptr() == dest[2].data_ptr() and lse.dtype == torch.float32
    assert not dest[:2].any() and not dest[num_rows + 2:].any(), "wrote outside the destination view"
    fresh, fresh_lse = dispatch.merge_two(*pieces, impl=impl)  # out=None: new, out_a's dtype
    assert fresh.dtype == dtype and torch.equal(fresh, out) and torch.equal(fresh_lse, lse)
    torch_error = float((same_dtype.double() - truth).abs().max())
    error = float((out.double() - truth).abs().max())
    assert error <= 2 * torch_error + _slack(dtype, truth, interpreted), (error, torch_error)
    assert torch.equal(torch.isinf(lse), torch.isinf(truth_lse)) and torch.isinf(lse[11, 3])
    finite = torch.isfinite(truth_lse)
    assert float((lse.double() - truth_lse)[finite].abs().max()) <= 1e-5


def check_merge_into(device, dtype, dim, impl="triton"):
    """In place into a float32 accumulator row slice, as ring attention does, three partials long."""
    num_rows, num_heads = 257, 5
    parts = [(_randn((num_rows, num_heads, dim), device, 10 + i), _randn((num_rows, num_heads), device, 20 + i, 4))
             for i in range(3)]
    parts = [(out.to(dtype), lse.float()) for out, lse in parts]
    acc_big = torch.zeros((num_rows + 3, num_heads, dim), dtype=torch.float32, device=device)
    lse_big = torch.zeros((num_rows + 3, num_heads), dtype=torch.float32, device=device)
    acc, acc_lse = acc_big[3:], lse_big[3:]
    acc.copy_(parts[0][0])
    acc_lse.copy_(parts[0][1])
    ref, ref_lse = start_accumulator(*parts[0])
    for out_b, lse_b in parts[1:]:
        dispatch.merge_into_(acc, acc_lse, out_b, lse_b, impl=impl)
        merge_partials_(ref, ref_lse, out_b, lse_b)
    assert float((acc - ref).abs().max()) <= 1e-5 and float((acc_lse - ref_lse).abs().max()) <= 1e-5
    assert not acc_big[:3].any() and not lse_big[:3].any()


def _score_inputs(device, dtype, dim, group, num_rows=333, num_kv_heads=3):
    q = _randn((11, num_kv_heads * group, dim), device, 30).to(dtype)
    k = _strided(_randn((num_rows, num_kv_heads, dim), device, 31), dtype)
    return q, k


def _truth_pooled(q, k, window):
    """float64 scores of the dtype-rounded inputs, max-pooled in float64."""
    num_kv_heads = k.shape[1]
    summary = q.double().reshape(q.shape[0], num_kv_heads, -1, q.shape[-1]).mean(dim=(0, 2))
    return pool_scores(torch.einsum("shd,hd->sh", k.double(), summary), window)


def check_score(device, dtype, dim, window, group=7, impl="triton"):
    q, k = _score_inputs(device, dtype, dim, group)
    truth = _truth_pooled(q, k, window)
    same_dtype = reference.score_and_pool(q, k, window)
    pooled = dispatch.score_and_pool(q, k, window, impl=impl)
    assert pooled.shape == truth.shape == same_dtype.shape and pooled.dtype == torch.float32
    torch_error = float((same_dtype.double() - truth).abs().max())
    error = float((pooled.double() - truth).abs().max())
    assert error <= 2 * torch_error + 1e-6 * float(truth.abs().max()), (error, torch_error)
    num_select = 100
    chosen = dispatch.select_topk(pooled, num_select)
    best = truth.topk(num_select, dim=0).values
    got = truth.gather(0, chosen).sort(dim=0, descending=True).values
    slack = 4 * torch_error + 2e-6 * float(truth.abs().max())  # 2x the kernel's error bound
    assert float((got - best).abs().max()) <= slack, "the selected rows are not the top ones"
    if window == 1:  # no ties: the very same rows
        want = truth.topk(num_select, dim=0).indices
        assert torch.equal(chosen.sort(dim=0).values, want.sort(dim=0).values)


def _pack_inputs(device, dtype, dim, num_rows=333, num_kv_heads=3, num_select=77):
    k = _strided(_randn((num_rows, num_kv_heads, dim), device, 40), dtype)
    v = _strided(_randn((num_rows, num_kv_heads, dim), device, 41), dtype)
    generator = torch.Generator(device="cpu").manual_seed(42)
    index = torch.stack([torch.randperm(num_rows, generator=generator)[:num_select] for _ in range(num_kv_heads)])
    return k, v, index.t().to(device)  # [n, Hkv], non-contiguous like topk's


def check_pack(device, dtype, dim, strided_out, impl="triton"):
    k, v, index = _pack_inputs(device, dtype, dim)
    slot_len = index.shape[0] + 9
    if strided_out:  # [slot_len, Hkv, D] views of one buffer with K and V interleaved per head
        buf = torch.full((slot_len, k.shape[1], 2, dim), 7.0, dtype=dtype, device=device)
        out_k, out_v = buf[:, :, 0], buf[:, :, 1]
    else:  # slot 1 of a [W, slot_len, Hkv, D] all-gather buffer
        buf = torch.full((2, 3, slot_len, k.shape[1], dim), 7.0, dtype=dtype, device=device)
        out_k, out_v = buf[0, 1], buf[1, 1]
    want_k, want_v = out_k.clone(), out_v.clone()
    reference.pack_selected(k, v, index, want_k, want_v)
    dispatch.pack_selected(k, v, index, out_k, out_v, impl=impl)
    assert torch.equal(out_k, want_k) and torch.equal(out_v, want_v)
    n = index.shape[0]
    assert bool((out_k[n:] == 7).all()) and bool((out_v[n:] == 7).all()), "rows >= n must stay untouched"
    if not strided_out:
        assert bool((buf[:, [0, 2]] == 7).all()), "wrote outside the slot"


def check_pack_bad_index_is_zero(device, impl="triton"):
    k, v, index = _pack_inputs(device, torch.float32, 64)
    index = index.clone()
    index[4, 1], index[6, 0] = -1, k.shape[0]
    out_k, out_v = (torch.ones((index.shape[0], 3, 64), device=device) for _ in range(2))
    dispatch.pack_selected(k, v, index, out_k, out_v, impl=impl)
    assert not out_k[4, 1].any() and not out_v[6, 0].any()
    assert torch.equal(out_k[5], k[index[5], torch.arange(3, device=device)])


# ---------------------------------------------------------------- references agree with spava (CPU, float64)

def test_reference_merge_is_spava_merge_in_float64():
    out_a, out_b = _randn((97, 6, 59), "cpu", 1), _randn((97, 6, 59), "cpu", 2)
    lse_a, lse_b = _randn((97, 6), "cpu", 3, 8), _randn((97, 6), "cpu", 4, 8)
    want, want_lse = start_accumulator(out_a, lse_a)
    merge_partials_(want, want_lse, out_b, lse_b)
    out, lse = reference.merge_two(out_a, lse_a, out_b, lse_b)
    assert out.dtype == lse.dtype == torch.float64
    assert float((out - want).abs().max()) <= 1e-12 and float((lse - want_lse).abs().max()) <= 1e-12
    acc, acc_lse = out_a.clone(), lse_a.clone()
    dispatch.merge_into_(acc, acc_lse, out_b, lse_b)  # CPU: the reference, aliasing its input
    assert float((acc - want).abs().max()) <= 1e-12 and float((acc_lse - want_lse).abs().max()) <= 1e-12


def test_reference_merge_equals_one_softmax_and_takes_the_other_piece_when_empty():
    scores, values = _randn((13, 4, 90), "cpu", 5, 6), _randn((90, 4, 32), "cpu", 6)
    part = lambda a, b: (torch.einsum("shk,khd->shd", scores[..., a:b].softmax(-1), values[a:b]),  # noqa: E731
                         scores[..., a:b].logsumexp(-1))
    out, lse = reference.merge_two(*part(0, 37), *part(37, 90))
    full_out, full_lse = part(0, 90)
    assert float((out - full_out).abs().max()) <= 1e-12 and float((lse - full_lse).abs().max()) <= 1e-12
    out_a, lse_a = part(0, 37)
    out_b, lse_b = part(37, 90)
    lse_a[0, 0] = lse_b[1, 1] = lse_a[2, 2] = lse_b[2, 2] = NEG_INF
    out_a[0, 0] = out_b[1, 1] = float("nan")
    out, lse = reference.merge_two(out_a, lse_a, out_b, lse_b)
    assert torch.equal(out[0, 0], out_b[0, 0]) and lse[0, 0] == lse_b[0, 0]
    assert torch.equal(out[1, 1], out_a[1, 1]) and lse[1, 1] == lse_a[1, 1]
    assert torch.equal(out[2, 2], out_a[2, 2]) and lse[2, 2] == NEG_INF


@pytest.mark.parametrize("window", [0, 1, 2, 4, 5, 7])
@pytest.mark.parametrize("num_rows", [0, 1, 2, 333])
def test_reference_scores_are_spava_scores(window, num_rows):
    q, k = _randn((11, 21, 80), "cpu", 7), _randn((num_rows, 3, 80), "cpu", 8)
    want = pool_scores(query_aware_scores(q, k), window)
    got = reference.score_and_pool(q, k, window)
    assert got.shape == (reference.pooled_length(num_rows, window), 3) == want.shape
    assert torch.equal(got, want)
    if num_rows:
        assert float((_truth_pooled(q, k, window) - got.double()).abs().max()) <= 1e-5


def test_reference_select_is_spava_select_into():
    k, v = _randn((333, 3, 80), "cpu", 9), _randn((333, 3, 80), "cpu", 10)
    scores = _randn((333, 3), "cpu", 11).float()
    want_k, want_v = torch.zeros(100, 3, 80, dtype=torch.float64), torch.zeros(100, 3, 80, dtype=torch.float64)
    select_into(scores, 77, k, v, want_k, want_v)
    buf = torch.zeros(100, 3, 2, 80, dtype=torch.float64)  # strided destinations
    reference.select_into(scores, 77, k, v, buf[:, :, 0], buf[:, :, 1])
    assert torch.equal(buf[:, :, 0], want_k) and torch.equal(buf[:, :, 1], want_v)


@pytest.mark.parametrize("dim", [80, 64])
def test_reference_window_attention_is_spava_varlen_attention_in_float64(dim):
    generator = torch.Generator().manual_seed(51)
    lengths = torch.randint(1, 65, (23,), generator=generator).tolist() + [64, 64, 1, 64]
    q, k, v, cu = _window_inputs("cpu", torch.float64, lengths, 3, dim)
    want = varlen_attention(q, k, v, cu, scale=0.2, backends=["math"], use_flash=False)
    got = dispatch.window_attention_reference(q, k, v, cu, max(lengths), 0.2)
    assert got.dtype == torch.float64 and float((got - want).abs().max()) <= 1e-12
    auto = dispatch.window_attention(q, k, v, cu, 64, 0.2)  # CPU, float64: the reference
    assert torch.equal(auto, got)
    with pytest.raises(ValueError):
        dispatch.window_attention_reference(q, k, v, cu, 63)
    check_window_attention("cpu", torch.float32, WINDOW_LENGTHS, 2, dim, impl="torch")


def test_dispatch_picks_torch_on_cpu_and_validates_impl():
    x = torch.zeros(2, 2, 4)
    assert not dispatch.use_triton("auto", x) and not dispatch.use_triton("torch", x)
    assert dispatch.use_triton("triton", x)
    with pytest.raises(ValueError):
        dispatch.use_triton("cuda", x)
    check_pack(torch.device("cpu"), torch.float32, 64, strided_out=True, impl="auto")


def test_import_spava_kernels_is_light():
    code = "import sys, spava_kernels; print(','.join(m for m in ('torch', 'triton') if m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == ""


# ---------------------------------------------------------------- Triton interpreter on CPU (subprocess)

INTERPRETED = {
    "merge_f32_d64": lambda: check_merge("cpu", torch.float32, 64, interpreted=True),
    "merge_f16_d80": lambda: check_merge("cpu", torch.float16, 80, interpreted=True),
    "merge_bf16_d128": lambda: check_merge("cpu", torch.bfloat16, 128, interpreted=True),
    "merge_into_f32acc_bf16_d96": lambda: check_merge_into("cpu", torch.bfloat16, 96),
    "score_bf16_d128_w5_g7": lambda: check_score("cpu", torch.bfloat16, 128, 5),
    "score_f16_d80_w4_g7": lambda: check_score("cpu", torch.float16, 80, 4),
    "score_f32_d64_w1_g7": lambda: check_score("cpu", torch.float32, 64, 1),
    "score_bf16_d96_w7_g1": lambda: check_score("cpu", torch.bfloat16, 96, 7, group=1),
    "pack_bf16_d128_slot": lambda: check_pack("cpu", torch.bfloat16, 128, strided_out=False),
    "pack_f16_d80_strided": lambda: check_pack("cpu", torch.float16, 80, strided_out=True),
    "pack_bad_index_is_zero": lambda: check_pack_bad_index_is_zero("cpu"),
    "window_f32_d80": lambda: check_window_attention("cpu", torch.float32, WINDOW_LENGTHS, 2, 80, interpreted=True),
    "window_bf16_d80": lambda: check_window_attention("cpu", torch.bfloat16, WINDOW_LENGTHS, 2, 80, interpreted=True),
    "window_f16_d64_block128": lambda: check_window_attention("cpu", torch.float16, [128, 100, 5], 2, 64,
                                                              interpreted=True),
    "window_bf16_d80_heads2_partial": lambda: check_window_attention("cpu", torch.bfloat16, WINDOW_LENGTHS, 3, 80,
                                                                     interpreted=True, config=(2, 4, 2)),
    "window_rotary_f32_d80": lambda: check_window_attention("cpu", torch.float32, WINDOW_LENGTHS, 2, 80,
                                                            interpreted=True, rotary=True),
    "window_rotary_bf16_d80_heads2": lambda: check_window_attention("cpu", torch.bfloat16, WINDOW_LENGTHS, 3, 80,
                                                                    interpreted=True, config=(2, 4, 2), rotary=True),
    "vision_fused_rotary_f32": check_vision_fused_rotary,
    "swiglu_gemm_f16": lambda: check_swiglu_gemm("cpu", torch.float16, 200, 64, 96, config=(64, 32, 32, 2, 1, 4)),
    "swiglu_gemm_f16_nobias": lambda: check_swiglu_gemm("cpu", torch.float16, 70, 32, 48, has_bias=False,
                                                        config=(64, 16, 16, 2, 1, 4)),
    "flash_f32_d80": lambda: check_flash_attention("cpu", torch.float32, FLASH_LENGTHS, 2, 80, interpreted=True,
                                                   config=(64, 32, 4, 1)),
    "flash_bf16_d80": lambda: check_flash_attention("cpu", torch.bfloat16, FLASH_LENGTHS, 2, 80, interpreted=True,
                                                    config=(32, 64, 4, 1)),
    "flash_f16_d64": lambda: check_flash_attention("cpu", torch.float16, [200, 5], 2, 64, interpreted=True,
                                                   config=(64, 64, 4, 1)),
    "flash_bf16_d72_pad": lambda: check_flash_attention("cpu", torch.bfloat16, [90, 33], 1, 72, interpreted=True,
                                                        config=(32, 32, 4, 1)),
}


def _run_interpreted() -> None:
    """Script mode (under TRITON_INTERPRET=1): run every interpreter check, print a JSON verdict."""
    results = {}
    for name, check in INTERPRETED.items():
        try:
            check()
            results[name] = "ok"
        except Exception:  # report every failure, not only the first
            results[name] = traceback.format_exc()
    print(json.dumps(results))


@pytest.fixture(scope="module")
def interpreted_results():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed (pip install triton): the interpreter checks need it")
    root = Path(__file__).resolve().parents[1]
    paths = [str(root), str(root / "kernels"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join(p for p in paths if p))
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # Triton's interpreter: minutes on 2 cores
@pytest.mark.parametrize("name", list(INTERPRETED))
def test_triton_kernel_in_interpreter(interpreted_results, name):
    assert interpreted_results[name] == "ok", interpreted_results[name]


# ---------------------------------------------------------------- Triton on CUDA

@pytest.fixture
def cuda_triton():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("triton")
    assert dispatch.use_triton("auto", torch.zeros(1, device="cuda")), "auto must pick Triton on CUDA"


DTYPES = [torch.bfloat16, torch.float16]
DIMS = [64, 80, 96, 128]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("check", ["merge", "merge_into", "pack", "pack_strided"])
@pytest.mark.gpu
@requires_cuda
@pytest.mark.usefixtures("cuda_triton")
def test_cuda_merge_and_pack(check, dim, dtype):
    device = torch.device("cuda")
    if check == "merge":
        check_merge(device, dtype, dim, impl="auto")
    elif check == "merge_into":
        check_merge_into(device, dtype, dim, impl="auto")
    else:
        check_pack(device, dtype, dim, strided_out=check == "pack_strided", impl="auto")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("window,group", [(5, 7), (1, 7), (4, 4), (7, 1)])
@pytest.mark.gpu
@requires_cuda
@pytest.mark.usefixtures("cuda_triton")
def test_cuda_score_and_pool(window, group, dim, dtype):
    check_score(torch.device("cuda"), dtype, dim, window, group=group, impl="auto")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.usefixtures("cuda_triton")
def test_cuda_pack_bad_index_and_select_into_match_spava():
    device = torch.device("cuda")
    check_pack_bad_index_is_zero(device)
    k, v, _ = _pack_inputs(device, torch.bfloat16, 128)
    scores = _randn((k.shape[0], 3), device, 12).float()
    want = [torch.zeros(90, 3, 128, dtype=torch.bfloat16, device=device) for _ in range(2)]
    got = [torch.zeros(90, 3, 128, dtype=torch.bfloat16, device=device) for _ in range(2)]
    select_into(scores, 77, k, v, *want)
    dispatch.select_into(scores, 77, k, v, *got)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def _vit_window_lengths(seed: int) -> list[int]:
    """7B-like windows in a shuffled order: 600 of 64 patches, 40 of 48, 4 of 36."""
    lengths = torch.tensor([64] * 600 + [48] * 40 + [36] * 4)
    return lengths[torch.randperm(lengths.numel(), generator=torch.Generator().manual_seed(seed))].tolist()


@pytest.mark.parametrize("dtype,dim,lengths,config,rotary", [
    (torch.bfloat16, 80, "vit", None, False),
    (torch.bfloat16, 80, "vit", None, True),
    (torch.bfloat16, 80, "vit", (2, 4, 2), False),
    (torch.bfloat16, 80, "vit", (4, 4, 3), True),
    (torch.float16, 64, [128, 100, 5, 64, 128, 17], None, True),
    (torch.float32, 128, [128, 100, 5, 64, 128, 17], None, False),
    (torch.bfloat16, 72, [33, 1, 16, 31], None, True),
])
@pytest.mark.gpu
@requires_cuda
@pytest.mark.usefixtures("cuda_triton")
def test_cuda_window_attention(dtype, dim, lengths, config, rotary):
    """The flash-attention rule at 7B ViT shapes (H = 16): kernel error <= 2x the torch reference's."""
    lengths = _vit_window_lengths(52) if lengths == "vit" else lengths
    check_window_attention(torch.device("cuda"), dtype, lengths, 16, dim, impl="auto", config=config, rotary=rotary)


@pytest.mark.parametrize("dtype,dim,lengths,config", [
    (torch.bfloat16, 80, "vit", None),
    (torch.bfloat16, 80, "vit", (128, 128, 8, 2, False)),
    (torch.bfloat16, 80, "vit", (128, 64, 4, 3, True)),
    (torch.bfloat16, 80, "vit", (64, 128, 4, 3, True)),
    (torch.float16, 64, [1000, 100, 5, 64, 128, 17], None),
    (torch.bfloat16, 128, [1000, 129, 3], None),
    (torch.float32, 80, [300, 1, 77], None),
    (torch.bfloat16, 72, [333, 1, 16, 31], None),
])
@pytest.mark.gpu
@requires_cuda
@pytest.mark.usefixtures("cuda_triton")
def test_cuda_flash_attention(dtype, dim, lengths, config):
    """The flash-attention rule (H = 16): kernel error <= 2x the torch reference's; "vit": three
    temporal grids of a 360p frame (26 x 46 patches) and a short one."""
    lengths = [1196, 1196, 1196, 77] if lengths == "vit" else lengths
    check_flash_attention(torch.device("cuda"), dtype, lengths, 16, dim, impl="auto", config=config)


@pytest.mark.parametrize("dtype,num_rows,k_dim,width,has_bias,config", [
    (torch.bfloat16, 3001, 1280, 3456, True, None),
    (torch.bfloat16, 777, 1280, 3456, False, (128, 64, 64, 8, 4, 4)),
    (torch.float16, 1000, 64, 200, True, None),
])
@pytest.mark.gpu
@requires_cuda
@pytest.mark.usefixtures("cuda_triton")
def test_cuda_swiglu_gemm(dtype, num_rows, k_dim, width, has_bias, config):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("TMA descriptors need sm_90")
    check_swiglu_gemm(torch.device("cuda"), dtype, num_rows, k_dim, width, has_bias, config, impl="auto")


@pytest.mark.gpu
@requires_cuda
@pytest.mark.usefixtures("cuda_triton")
def test_cuda_varlen_attention_triton_backend_is_the_kernel():
    """varlen_attention(backends=["triton", ...]): the window kernel for windows, the flash kernel for
    long sequences, SDPA for fp32;
    error vs float64 <= 2x SDPA's math backend in bf16 (+1e-6)."""
    device = torch.device("cuda")
    q, k, v, cu = _window_inputs(device, torch.bfloat16, _vit_window_lengths(53), 16, 80)
    truth = varlen_attention(q.double(), k.double(), v.double(), cu, backends=["math"], use_flash=False)
    math_bf16 = varlen_attention(q, k, v, cu, backends=["math"], use_flash=False)
    got = varlen_attention(q, k, v, cu, backends=["triton", "cudnn"])
    assert torch.equal(got, dispatch.window_attention(q, k, v, cu, 64))
    math_error = float((math_bf16.double() - truth).abs().max())
    assert float((got.double() - truth).abs().max()) <= 2 * math_error + 1e-6
    q, k, v = q[:456], k[:456], v[:456]  # sequences > 128 rows take the flash kernel
    long_cu = torch.tensor([0, 200, 456], dtype=torch.int32, device=device)
    got = varlen_attention(q, k, v, long_cu, backends=["triton", "math"], use_flash=False)
    assert torch.equal(got, dispatch.flash_attention(q, k, v, long_cu, 256))
    truth = varlen_attention(q.double(), k.double(), v.double(), long_cu, backends=["math"], use_flash=False)
    math_error = float((varlen_attention(q, k, v, long_cu, backends=["math"]).double() - truth).abs().max())
    assert float((got.double() - truth).abs().max()) <= 2 * math_error + 1e-6
    q32 = q.float()  # fp32 is not the kernels': SDPA
    got = varlen_attention(q32, k.float(), v.float(), long_cu, backends=["triton", "math"], use_flash=False)
    assert torch.equal(got, varlen_attention(q32, k.float(), v.float(), long_cu, backends=["math"], use_flash=False))


if __name__ == "__main__":
    _run_interpreted()
