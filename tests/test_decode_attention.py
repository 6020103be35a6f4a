"""spava_kernels.decode_attention: the torch reference and the Triton kernel against float64 math.

The truth here is written independently of both (heads repeated as HF's repeat_kv, per-row masks).
Inputs are random and rounded to the tested dtype first, so the truth sees the same values; cache
rows at or past `length` hold NaN, which must never reach a result. float32 must match to 1e-5 of
the largest output; fp16 / bf16 follow the project's rule (tests/test_kernels.py): error <= 2x the
error of the torch reference in the same dtype. Output buffers are strided views poisoned with NaN:
every element of them must be written, nothing around them.

The Triton kernel runs on CPU under TRITON_INTERPRET=1 in one subprocess (this file as a script, as
tests/test_kernels.py does), on a few small shapes with tiny tiles and splits so that several splits
and the merge run; on CUDA (tests marked gpu) over the whole grid, at Qwen2.5-VL-7B's shapes, with
host syncs turned into errors, and replayed from a CUDA graph while the length grows.
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

from spava_kernels import decode_attention as decode_module
from spava_kernels.decode_attention import DecodeAttention, DecodeWorkspace, decode_attention, default_num_splits

NAN, NEG_INF = float("nan"), float("-inf")
HEADS = [(28, 4), (7, 7), (16, 2)]
CAPACITIES = [1, 100, 1000, 5000]
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _lengths(capacity):
    return sorted({1, min(capacity, capacity // 2 + 7), capacity})


def _randn(shape, seed, device):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator).to(device)  # float32: rounded to the tested dtype next


def _inputs(device, dtype, num_q, heads, dim, capacity, length, strided, seed):
    """q `[T, Hq, D]` and k, v `[C, Hkv, D]` in `dtype`; rows >= length are NaN. strided: q every second
    head of a bigger tensor, k and v the halves of one interleaved `[C, 2, Hkv, D]` buffer."""
    num_heads, num_kv_heads = heads
    q = _randn((num_q, num_heads, dim), seed, device).to(dtype)
    kv = _randn((capacity, 2, num_kv_heads, dim), seed + 1, device).to(dtype)
    kv[length:] = NAN
    if not strided:
        return q, kv[:, 0].contiguous(), kv[:, 1].contiguous()
    wide_q = torch.full((num_q, 2 * num_heads, dim), NAN, dtype=dtype, device=device)
    wide_q[:, ::2] = q
    return wide_q[:, ::2], kv[:, 0], kv[:, 1]


def _truth(q, k_cache, v_cache, length, is_causal, scale):
    """float64 attention of q over the first `length` rows, query head h on KV head h // (Hq / Hkv):
    (out `[T, Hq, D]`, lse `[T, Hq]`); a row that sees no key gets zeros and -inf."""
    num_q, num_heads, dim = q.shape
    group = num_heads // k_cache.shape[1]
    scale = dim ** -0.5 if scale is None else scale
    ks = [k_cache[:length, j].double().contiguous() for j in range(k_cache.shape[1])]
    vs = [v_cache[:length, j].double().contiguous() for j in range(k_cache.shape[1])]
    keys = torch.arange(length, device=q.device)
    limits = torch.tensor([length - num_q + 1 + t if is_causal else length for t in range(num_q)], device=q.device)
    visible = keys[None, :] < limits[:, None]  # [T, L]
    out = torch.zeros(q.shape, dtype=torch.float64, device=q.device)
    lse = torch.full(q.shape[:2], NEG_INF, dtype=torch.float64, device=q.device)
    for head in range(num_heads):
        scores = (q[:, head].double() @ ks[head // group].T * scale).masked_fill(~visible, NEG_INF)
        lse[:, head] = torch.logsumexp(scores, dim=-1)
        has_keys = torch.isfinite(lse[:, head])
        probs = torch.exp(scores[has_keys] - lse[has_keys, head][:, None])
        out[has_keys, head] = probs @ vs[head // group]
    return out, lse


def _length_arg(length, kind, device, seed):
    if kind == "int":
        return length
    return torch.tensor([length], dtype=torch.int32 if seed % 2 else torch.int64, device=device)


def _slack(dtype, truth, interpreted):
    """One bf16 ulp of the largest value where the interpreter truncates to bf16, else a tiny epsilon."""
    if interpreted and dtype == torch.bfloat16:
        return float(truth.abs().max()) * 2.0 ** -7
    return 1e-6 * max(1.0, float(truth.abs().max()))


def check_decode(device, dtype, num_q, heads, dim, capacity, length, is_causal, kind, strided=False, impl="triton",
                 interpreted=False, num_splits=None, config=None, seed=0, scale=None):
    """One call into NaN-poisoned strided out / lse_out views, checked against the float64 truth."""
    q, k, v = _inputs(device, dtype, num_q, heads, dim, capacity, length, strided, seed)
    length_arg = _length_arg(length, kind, device, seed)
    truth, truth_lse = _truth(q, k, v, length, is_causal, scale)
    num_heads = heads[0]
    out_big = torch.full((num_q, num_heads + 3, dim), NAN, dtype=dtype, device=device)
    lse_big = torch.full((num_q, 2 * num_heads), NAN, dtype=torch.float32, device=device)
    out, lse_out = out_big[:, 1:num_heads + 1], lse_big[:, ::2]
    if config is not None:
        from spava_kernels.decode_kernels import Config

        config = Config(*config)
    got, got_lse = decode_attention(q, k, v, length_arg, scale=scale, is_causal=is_causal, num_splits=num_splits,
                                    out=out, lse_out=lse_out, impl=impl, config=config)
    assert got is out and got_lse is lse_out
    assert not torch.isnan(out).any() and not torch.isnan(lse_out).any(), "an output element was not written"
    assert torch.isnan(out_big[:, 0]).all() and torch.isnan(out_big[:, num_heads + 1:]).all(), "wrote outside out"
    assert torch.isnan(lse_big[:, 1::2]).all(), "wrote outside lse_out"
    assert torch.equal(torch.isinf(got_lse), torch.isinf(truth_lse)), "rows without keys must have lse -inf"
    finite = torch.isfinite(truth_lse)
    if finite.any():
        lse_error = float((got_lse.double() - truth_lse)[finite].abs().max())
        assert lse_error <= 1e-5 * max(1.0, float(truth_lse[finite].abs().max())), lse_error
    assert not got[~finite].any(), "rows without keys must be zero"
    error = float((got.double() - truth).abs().max())
    if dtype == torch.float32:
        assert error <= 1e-5 * max(float(truth.abs().max()), 1e-3), error
    else:
        same_dtype, _ = decode_attention(q, k, v, length_arg, scale=scale, is_causal=is_causal, impl="torch")
        torch_error = float((same_dtype.double() - truth).abs().max())
        assert error <= 2 * torch_error + _slack(dtype, truth, interpreted), (error, torch_error)
    return got, got_lse


# ---------------------------------------------------------------- the torch reference (CPU)

@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("num_q", [1, 3])
def test_reference_matches_float64_truth(num_q, heads):
    """float32 over the grid of capacities, lengths and both causal modes, with head_dim (64, 80, 128),
    int / tensor lengths, strided views and the scale taking turns; float64 to 1e-12 once per capacity."""
    seed = 0
    for capacity in CAPACITIES:
        for length in _lengths(capacity):
            for is_causal in (True, False):
                if is_causal and length < num_q:
                    continue
                seed += 1
                check_decode("cpu", torch.float32, num_q, heads, (64, 80, 128)[seed % 3], capacity, length, is_causal,
                             "tensor" if seed % 2 else "int", strided=seed % 4 < 2, impl="torch", seed=seed,
                             scale=None if seed % 5 < 3 else 0.11)
        q, k, v = _inputs("cpu", torch.float64, num_q, heads, 80, capacity, capacity, True, 99)
        is_causal = capacity >= num_q
        out, lse = decode_attention(q, k, v, torch.tensor([capacity]), is_causal=is_causal)  # CPU: the reference
        want, want_lse = _truth(q, k, v, capacity, is_causal, None)
        assert out.dtype == lse.dtype == torch.float64
        assert float((out - want).abs().max()) <= 1e-12 and float((lse - want_lse).abs().max()) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reference_half_dtypes_round_once(dtype):
    check_decode("cpu", dtype, 3, (28, 4), 128, 1000, 777, True, "tensor", strided=True, impl="torch")


def test_reference_empty_cache_and_causal_rows_without_keys():
    """length 0 (an empty shard, non-causal): lse -inf, zeros. A tensor length below T (causal): the
    first rows see no key."""
    check_decode("cpu", torch.float32, 3, (7, 7), 64, 100, 0, False, "tensor", impl="torch")
    check_decode("cpu", torch.float32, 1, (28, 4), 64, 100, 0, False, "int", impl="torch")
    _, lse = check_decode("cpu", torch.float32, 3, (16, 2), 80, 100, 2, True, "tensor", impl="torch")
    assert torch.isinf(lse[0]).all() and torch.isfinite(lse[1:]).all()


def test_reference_tensor_length_beyond_capacity_is_clamped():
    q, k, v = _inputs("cpu", torch.float32, 1, (4, 2), 64, 50, 50, False, 7)
    out, lse = decode_attention(q, k, v, torch.tensor([80]), impl="torch")
    want, want_lse = decode_attention(q, k, v, 50, impl="torch")
    assert torch.equal(out, want) and torch.equal(lse, want_lse)


# ---------------------------------------------------------------- API: validation, splits, workspaces (CPU)

def test_bad_inputs_name_what_to_change():
    q, k, v = _inputs("cpu", torch.float32, 3, (28, 4), 128, 100, 100, False, 8)
    bad_calls = {
        "length must be": lambda: decode_attention(q, k, v, 101),
        "at least as many keys": lambda: decode_attention(q, k, v, 2),
        "tensor length": lambda: decode_attention(q, k, v, torch.tensor([5.0])),
        "one int32/int64 element": lambda: decode_attention(q, k, v, torch.tensor([5, 6])),
        "multiple of Hkv": lambda: decode_attention(q[:, :27], k, v, 10),
        "head_dim": lambda: decode_attention(q[..., :72], k[..., :72], v[..., :72], 10, impl="triton"),
        "contiguous last dim": lambda: decode_attention(q, torch.ones(100, 4, 256)[..., ::2], v, 10),
        "share one of": lambda: decode_attention(q, k.half(), v, 10),
        "out must be": lambda: decode_attention(q, k, v, 10, out=torch.empty(3, 28, 64)),
        "lse_out must be": lambda: decode_attention(q, k, v, 10, lse_out=torch.empty(3, 28, dtype=torch.float64)),
        "impl must be": lambda: decode_attention(q, k, v, 10, impl="cuda"),
        "query rows per KV head": lambda: decode_attention(torch.ones(19, 28, 128), k, v, 50,
                                                           impl="triton"),  # 7 * 19 > 128
        "num_splits": lambda: decode_attention(q, k, v, 10, impl="triton", num_splits=0),
        "float64": lambda: decode_attention(q.double(), k.double(), v.double(), 10, impl="triton"),
    }
    for message, call in bad_calls.items():
        with pytest.raises(ValueError, match=message):
            call()


def test_default_num_splits_fills_the_device_but_keeps_hundreds_of_keys():
    cpu = torch.device("cpu")  # CPU counts as 4 SMs: 8 programs
    assert default_num_splits(600_000, 4, cpu) == 2 and default_num_splits(600_000, 1, cpu) == 8
    assert default_num_splits(1000, 1, cpu) == 3 and default_num_splits(100, 4, cpu) == 1
    assert default_num_splits(0, 4, cpu) == 1


def test_decode_attention_object_keeps_one_workspace_per_shape():
    attention = DecodeAttention(max_workspaces=2)
    q1, q3 = torch.zeros(1, 28, 128), torch.zeros(3, 28, 128)
    first = attention.workspace(q1, 66)
    assert attention.workspace(q1, 66) is first
    assert first.partial_out.shape == (28, 66, 128) and first.partial_lse.shape == (28, 66)
    assert first.fits(1, 28, 128, 66, q1.device) and not first.fits(3, 28, 128, 66, q1.device)
    assert first.fits(1, 14, 128, 40, q1.device) and not first.fits(1, 28, 80, 66, q1.device)
    third = attention.workspace(q3, 66)
    assert attention.workspace(q1, 66) is first  # q3's is now the least recently used
    attention.workspace(q1, 8)  # a third shape: q3's goes
    assert len(attention._workspaces) == 2 and attention.workspace(q1, 66) is first
    assert attention.workspace(q3, 66) is not third
    workspace = DecodeWorkspace.empty(1, 4, 64, 2, torch.device("cpu"))
    q, k, v = _inputs("cpu", torch.float32, 1, (28, 4), 64, 10, 10, False, 9)
    with pytest.raises(ValueError, match="workspace"):
        decode_attention(q, k, v, 10, impl="triton", num_splits=2, workspace=workspace)


def test_kernel_modules_import_nothing_from_spava():
    code = ("import sys, spava_kernels.decode_attention, spava_kernels.decode_reference, "
            "spava_kernels.decode_kernels, spava_kernels.decode_bench\n"
            "print(','.join(m for m in sys.modules if m == 'spava' or m.startswith('spava.')))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the entry point runs the full benchmark")
def test_benchmark_entry_point_runs_on_cpu():
    proc = subprocess.run([sys.executable, "-m", "spava_kernels.decode_attention"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if "torch reference" in line]
    assert len(rows) == 2 and all(float(line.split()[-1]) <= 1e-5 for line in rows), proc.stdout


# ---------------------------------------------------------------- Triton interpreter on CPU (subprocess)

TINY = (16, 4, 1, 16)  # Config: 16-key tiles and 16-key splits, so small caches still take several splits


def _growing_length_reuses_workspace():
    """One DecodeAttention, one tensor length changed in place between calls (as a graph replay would):
    the workspace is reused and each call matches the truth at its length."""
    attention = DecodeAttention()
    q, k, v = _inputs("cpu", torch.float32, 1, (8, 2), 64, 60, 60, True, 11)
    length = torch.tensor([30], dtype=torch.int32)
    out, lse = torch.empty(1, 8, 64), torch.empty(1, 8)
    from spava_kernels.decode_kernels import Config

    for value in (7, 31, 60):
        length.fill_(value)
        attention(q, k, v, length, out=out, lse_out=lse, impl="triton", num_splits=3, config=Config(*TINY))
        want, want_lse = _truth(q, k, v, value, True, None)
        assert float((out.double() - want).abs().max()) <= 1e-5 * float(want.abs().max())
        assert float((lse.double() - want_lse).abs().max()) <= 1e-5 * float(want_lse.abs().max())
    assert len(attention._workspaces) == 1


INTERPRETED = {
    "f32_t3_28x4_d128_causal_tensor_strided": lambda: check_decode(
        "cpu", torch.float32, 3, (28, 4), 128, 60, 37, True, "tensor", strided=True, interpreted=True,
        num_splits=3, config=TINY),
    "bf16_t1_16x2_d80_full_int": lambda: check_decode(
        "cpu", torch.bfloat16, 1, (16, 2), 80, 64, 64, False, "int", interpreted=True, num_splits=4,
        config=TINY, seed=3),
    "f16_t3_7x7_d64_causal_int_default_config": lambda: check_decode(
        "cpu", torch.float16, 3, (7, 7), 64, 100, 61, True, "int", strided=True, interpreted=True, seed=4),
    "f32_t3_16x2_d64_causal_rows_without_keys": lambda: check_decode(
        "cpu", torch.float32, 3, (16, 2), 64, 40, 2, True, "tensor", interpreted=True, num_splits=2, config=TINY),
    "f32_t1_28x4_d64_length0": lambda: check_decode(
        "cpu", torch.float32, 1, (28, 4), 64, 40, 0, False, "tensor", interpreted=True, num_splits=2, config=TINY),
    "f32_t1_28x4_d64_length1_c1": lambda: check_decode(
        "cpu", torch.float32, 1, (28, 4), 64, 1, 1, True, "int", interpreted=True),
    "growing_length_reuses_workspace": _growing_length_reuses_workspace,
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
    assert decode_module._use_triton("auto", torch.zeros(1, device="cuda")), "auto must pick Triton on CUDA"


@pytest.mark.parametrize("dtype,dim", [(torch.bfloat16, 64), (torch.bfloat16, 80), (torch.bfloat16, 96),
                                       (torch.bfloat16, 128), (torch.float32, 80), (torch.float32, 128),
                                       (torch.float16, 64), (torch.float16, 128)])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("num_q", [1, 3])
@pytest.mark.gpu
@requires_cuda
@pytest.mark.usefixtures("cuda_triton")
def test_cuda_decode_matches_float64_truth(num_q, heads, dtype, dim):
    """The whole grid of capacities, lengths, causal modes and length kinds through impl="auto" (default
    splits and config), bf16 at every head_dim, fp32 and fp16 at two."""
    seed = 0
    for capacity in CAPACITIES:
        for length in _lengths(capacity):
            for is_causal in (True, False):
                if is_causal and length < num_q:
                    continue
                for kind in ("int", "tensor"):
                    seed += 1
                    check_decode(torch.device("cuda"), dtype, num_q, heads, dim, capacity, length, is_causal, kind,
                                 strided=seed % 3 == 0, impl="auto", seed=seed, scale=None if seed % 2 else 0.11)
    check_decode(torch.device("cuda"), dtype, num_q, heads, dim, 1000, 0, False, "tensor", impl="auto")
    check_decode(torch.device("cuda"), dtype, 3, heads, dim, 1000, 2, True, "tensor", impl="auto")


@pytest.mark.parametrize("num_q,length,kind", [(1, 150_000, "tensor"), (1, 104_729, "int"), (3, 150_000, "int"),
                                               (16, 131_071, "tensor")])
@pytest.mark.gpu
@requires_cuda
@pytest.mark.usefixtures("cuda_triton")
def test_cuda_decode_at_7b_shapes(num_q, length, kind):
    """Qwen2.5-VL-7B: Hq 28, Hkv 4, D 128, bf16, a 150K-row cache, default splits."""
    check_decode(torch.device("cuda"), torch.bfloat16, num_q, (28, 4), 128, 150_000, length, True, kind,
                 strided=num_q == 3, impl="auto", seed=num_q)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.usefixtures("cuda_triton")
def test_cuda_tensor_length_does_not_sync():
    device = torch.device("cuda")
    q, k, v = _inputs(device, torch.bfloat16, 1, (28, 4), 128, 20_000, 20_000, False, 12)
    length = torch.tensor([12_345], dtype=torch.int32, device=device)
    attention = DecodeAttention()
    out, lse = torch.empty_like(q), torch.empty(1, 28, device=device)
    attention(q, k, v, length, out=out, lse_out=lse)  # compile and allocate the workspace first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        attention(q, k, v, length, out=out, lse_out=lse)
        decode_attention(q, k, v, length)  # the functional form, allocating its outputs and workspace
        decode_attention(q, k, v, length, is_causal=False, impl="torch")  # the reference too
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want, want_lse = _truth(q, k, v, 12_345, True, None)
    same_dtype, _ = decode_attention(q, k, v, 12_345, impl="torch")
    assert float((out.double() - want).abs().max()) <= 2 * float((same_dtype.double() - want).abs().max()) + 1e-6
    assert float((lse.double() - want_lse).abs().max()) <= 1e-4


@pytest.mark.gpu
@requires_cuda
@pytest.mark.usefixtures("cuda_triton")
def test_cuda_graph_replay_with_growing_length():
    """Capture once at one length, replay at growing lengths (the tensor changes in place)."""
    device, capacity = torch.device("cuda"), 30_000
    q, k, v = _inputs(device, torch.bfloat16, 1, (28, 4), 128, capacity, capacity, False, 13)
    length = torch.tensor([100], dtype=torch.int64, device=device)
    attention = DecodeAttention()
    out, lse = torch.empty_like(q), torch.empty(1, 28, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up: compile and allocate the workspace outside the capture
        attention(q, k, v, length, out=out, lse_out=lse)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        attention(q, k, v, length, out=out, lse_out=lse)
    for value in (1, 100, 257, 4097, 20_011, capacity):
        length.fill_(value)
        out.fill_(NAN)
        graph.replay()
        want, want_lse = _truth(q, k, v, value, True, None)
        same_dtype, _ = decode_attention(q, k, v, value, impl="torch")
        torch_error = float((same_dtype.double() - want).abs().max())
        assert float((out.double() - want).abs().max()) <= 2 * torch_error + 1e-6, value
        assert float((lse.double() - want_lse).abs().max()) <= 1e-4, value


@pytest.mark.gpu
@requires_cuda
def test_cuda_default_num_splits_fills_the_device():
    device = torch.device("cuda")
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count
    assert 4 * default_num_splits(600_000, 4, device) >= 2 * num_sms
    assert default_num_splits(5000, 4, device) == 5000 // 256


if __name__ == "__main__":
    _run_interpreted()
