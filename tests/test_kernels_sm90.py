"""The Gluon (Triton's lower-level dialect) sm_90 kernels, `spava_kernels.flash_attention_sm90` and
`swiglu_gemm_sm90`: on CPU, their launch arithmetic and an offline compile for sm_90 (Triton's bundled ptxas
and cuobjdump: no spills, the planned register split, the wgmma / TMA instructions); on an H100 / H200
(marked gpu), the tolerance rules of `test_kernels.py` for outputs."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
import torch

from _kernel_checks import check_flash_attention, check_swiglu_gemm

pytest.importorskip("triton.experimental.gluon", reason="needs Triton with Gluon (3.6)")


@pytest.fixture(scope="module")
def cuda_sm90():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Gluon kernels are for sm_90 (H100 / H200)")


def _compile_offline(kernel, options: dict, descriptor_shapes: dict, pointer_types: dict) -> dict:
    """Compile a Gluon kernel for sm_90 without a GPU (Triton's bundled ptxas) with its `launch_options`
    (constants, num_warps, maxnreg); bf16 descriptors get the default NVMMA layout of their block shape, other
    arguments are i32 unless named in pointer_types. Reads the cubin with the bundled cuobjdump:
    {"spill_bytes", "shared_bytes", "sass"}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    constants = {name: value for name, value in options.items() if name not in ("num_warps", "maxnreg")}
    constants["num_warps"] = options["num_warps"]
    signature = {}
    for name in kernel.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in descriptor_shapes:
            rows, width = descriptor_shapes[name]
            layout = gl.NVMMASharedLayout.get_default_for([rows, width], gl.bfloat16)
            signature[name] = f"tensordesc<bf16[{rows}, {width}],{layout!r}>"
        else:
            signature[name] = pointer_types.get(name, "i32")
    source = GluonASTSource(kernel, signature, {(kernel.arg_names.index(k),): v for k, v in constants.items()})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=options["num_warps"], maxnreg=options["maxnreg"]))
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(compiled.asm["cubin"])
        usage = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([cuobjdump, "-sass", path], capture_output=True, text=True, check=True).stdout
    spills = [int(n) for n in re.findall(r"(?:STACK|LOCAL):(\d+)", usage)]
    return {"spill_bytes": sum(spills), "shared_bytes": compiled.metadata.shared, "sass": sass}


@pytest.mark.parametrize("config", [(64, 128, 2, 4, 2, 1, True), (128, 64, 2, 4, 1, 2, True),
                                    (64, 64, 3, 4, 2, 1, False), (64, 128, 2, 4, 1, 3, True)])
def test_sm90_register_budget(config):
    """Registers of the Gluon kernel's partitions fit the SM for the CTAs per SM asked for (pure host code)."""
    from spava_kernels import flash_attention_sm90 as sm90

    config = sm90.Config(*config)
    max_registers, consumer = sm90.register_budget(config)
    num_threads = (config.num_consumers * config.num_warps + 4) * 32
    assert max_registers % 8 == 0 and consumer % 8 == 0 and 24 <= consumer <= 240
    assert max_registers * num_threads * config.ctas_per_sm <= 65536
    used = consumer * config.num_consumers * config.num_warps * 32 + sm90._PRODUCER_REGISTERS.value * 128
    assert used <= max_registers * num_threads


@pytest.mark.parametrize("dim,num_stages", [(64, 4), (80, 4), (96, 4), (128, 3)])
def test_sm90_default_config_fits_shared_memory(dim, num_stages):
    """The default launch config keeps as many K/V stages as fit in an sm_90 CTA's 227 KB (pure host code)."""
    from spava_kernels import flash_attention_sm90 as sm90

    config = sm90.default_config(dim)
    assert config.num_stages == num_stages
    assert sm90.shared_bytes(config, dim) <= 227 * 1024


@pytest.mark.parametrize("version,is_ok", [("3.6.0", True), ("3.7.1+git0a1b", True), ("4.0", True), ("3.5.1", False),
                                           ("2.9", False), ("unknown", False)])
def test_gluon_needs_triton_3_6(version, is_ok):
    """The Gluon kernels are written against Triton 3.6's API: older Tritons keep the Triton kernels."""
    from spava_kernels import dispatch

    assert dispatch.gluon_version_ok(version) is is_ok


@pytest.mark.parametrize("config,dim", [((64, 128, 4, 4, 2, 1, True), 80), ((64, 64, 2, 4, 2, 1, False), 128),
                                        ((64, 128, 3, 4, 2, 1, True), 128)])
def test_sm90_kernel_compiles_offline_without_spills(config, dim):
    """The Gluon kernel compiled for sm_90 on this (CPU) machine: no register spills, its setmaxnreg split as
    planned, shared memory within an H100's 227 KB and as `shared_bytes` estimates it (plus the mbarriers), and
    the wgmma / TMA instructions it is built around."""
    from spava_kernels import flash_attention_sm90 as sm90

    config = sm90.Config(*config)
    options = sm90.launch_options(config, dim)
    dim_a, dim_b = sm90.split_head_dim(dim)
    shapes = {f"{x}{piece}_desc": (config.block_m if x == "q" else config.block_n,
                                   dim_a if piece == "a" else dim_b or 16)
              for x in "qkv" for piece in "ab"}
    result = _compile_offline(sm90._flash_sm90_kernel, options, shapes,
                              {"o_ptr": "*bf16", "cu_ptr": "*i32", "qk_scale": "fp32"})
    assert result["spill_bytes"] == 0
    assert sm90.shared_bytes(config, dim) <= result["shared_bytes"] <= min(227 * 1024, sm90.shared_bytes(config, dim) + 1024)
    assert f"USETMAXREG.TRY_ALLOC.CTAPOOL UP0, {options['CONSUMER_REGISTERS']:#x}" in result["sass"]
    assert "HGMMA.64x" in result["sass"] and "UTMALDG" in result["sass"]


@pytest.mark.parametrize("config", [(128, 128, 64, 8, 3, 8), (128, 64, 64, 8, 4, 4)])
def test_swiglu_sm90_kernel_compiles_offline_without_spills(config):
    """The Gluon SwiGLU GEMM compiled for sm_90 on this (CPU) machine: no spills, shared memory within 227 KB,
    wgmma and TMA loads."""
    from spava_kernels import swiglu_gemm_sm90 as sm90

    config = sm90.Config(*config)
    shapes = {"x_desc": (config.block_m, config.block_k), "w_desc": (config.block_n, config.block_k),
              "out_desc": (config.block_m, config.block_n)}
    result = _compile_offline(sm90._swiglu_gemm_sm90_kernel, sm90.launch_options(config, 1280, True), shapes,
                              {"bias_ptr": "*bf16"})
    assert result["spill_bytes"] == 0 and result["shared_bytes"] <= 227 * 1024
    assert "HGMMA.64x" in result["sass"] and "UTMALDG" in result["sass"]


@pytest.mark.parametrize("dtype,dim,lengths,config", [
    (torch.bfloat16, 80, "vit", (64, 128, 2, 4, 2, 1, True)),
    (torch.bfloat16, 80, "vit", (64, 128, 2, 4, 2, 1, True, True)),
    (torch.bfloat16, 80, "vit", (64, 128, 2, 4, 2, 1, False)),
    (torch.bfloat16, 80, "vit", (128, 64, 2, 4, 1, 2, True)),
    (torch.bfloat16, 80, "vit", (64, 64, 3, 4, 2, 1, True)),
    (torch.float16, 64, [1000, 100, 5, 64, 128, 17], (64, 128, 2, 4, 2, 1, True)),
    (torch.bfloat16, 128, [1000, 129, 3], (64, 64, 2, 4, 2, 1, True)),
    (torch.bfloat16, 96, [333, 1, 16, 31, 128], (64, 128, 2, 4, 2, 1, True)),
])
@pytest.mark.gpu
@pytest.mark.usefixtures("cuda_sm90")
def test_cuda_flash_attention_sm90(dtype, dim, lengths, config):
    """The Gluon sm_90 kernel under the flash-attention rule, for several launch configs, lengths that end
    mid-tile, one-token sequences and query blocks past a sequence's end."""
    lengths = [1196, 1196, 1196, 77] if lengths == "vit" else lengths
    check_flash_attention(torch.device("cuda"), dtype, lengths, 16, dim, config=config, kernel="sm90")


@pytest.mark.parametrize("dtype,num_rows,k_dim,width,has_bias,config", [
    (torch.bfloat16, 3001, 1280, 3456, True, (128, 128, 64, 8, 3, 8)),
    (torch.bfloat16, 777, 1280, 3456, False, (128, 64, 64, 8, 4, 4)),
    (torch.float16, 1000, 64, 200, True, (128, 64, 64, 4, 2, 8)),
])
@pytest.mark.gpu
@pytest.mark.usefixtures("cuda_sm90")
def test_cuda_swiglu_gemm_sm90(dtype, num_rows, k_dim, width, has_bias, config):
    """The Gluon SwiGLU GEMM: persistent tiles with partial row and column tiles, with and without bias."""
    check_swiglu_gemm(torch.device("cuda"), dtype, num_rows, k_dim, width, has_bias, config, kernel="sm90")
