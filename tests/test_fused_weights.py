"""Fused decode weights (`spava.models.fused_weights`) and the fused residual-add + norm.

Float64, tiny Llama (no Q/K/V bias) and Qwen2 (Q/K/V bias) models on the CPU:
* after fusing, the modules compute exactly what they computed before, their parameters are row
  slices of the fused tensors, and no weight memory is added;
* a layer whose projections are not plain linears is left untouched;
* decode steps through the fused weights give the unfused steps' logits to float64 rounding and the
  same tokens as HF's generate;
* `add_norm` equals the residual add followed by the norm, bit for bit on the eager path.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spava.attention.config import AttentionConfig
from spava.attention.registry import get_method
from spava.comm.collectives import SPComm
from spava.models.decode_step import DecodeEngine
from spava.models.fused_ops import FusedOps
from spava.models.fused_weights import fuse_layer, fuse_layers
from spava.models.generation import SamplingParams
from spava.models.runner import ModelRunner

from test_text_lm import hf_reference, prompt, tiny_model


def _storage_bytes(module: nn.Module) -> int:
    """Bytes of the distinct storages behind a module's parameters."""
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in module.parameters()}
    return sum(storages.values())


def _lies_in(part: torch.Tensor, whole: torch.Tensor) -> bool:
    return part.untyped_storage().data_ptr() == whole.untyped_storage().data_ptr()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_layers_compute_what_they_did_without_extra_memory(arch):
    model = tiny_model(arch)
    layers = model.decoder_modules().layers
    x = torch.randn(5, layers[0].self_attn.q_proj.weight.shape[1], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    names = ("q_proj", "k_proj", "v_proj")
    before = [([getattr(layer.self_attn, n)(x) for n in names], layer.mlp(x)) for layer in layers]
    bytes_before = _storage_bytes(layers)
    fused = fuse_layers(layers)
    assert _storage_bytes(layers) == bytes_before
    for layer, entry, (projections, mlp_out) in zip(layers, fused, before):
        assert entry is not None and entry.gate_up is not None
        assert (entry.qkv_bias is not None) == (arch == "qwen2")
        for name, expected in zip(names, projections):
            module = getattr(layer.self_attn, name)
            assert _lies_in(module.weight, entry.qkv_weight) and torch.equal(module(x), expected)
        assert _lies_in(layer.mlp.gate_proj.weight, entry.gate_up) and _lies_in(layer.mlp.up_proj.weight, entry.gate_up)
        assert torch.equal(layer.mlp(x), mlp_out)
        single = torch.nn.functional.linear(x, entry.qkv_weight, entry.qkv_bias)
        assert torch.allclose(single, torch.cat(projections, dim=-1), atol=1e-13, rtol=0)


class _ScaledLinear(nn.Linear):
    """A projection type spava does not know (its forward is not plain `F.linear`)."""

    def forward(self, x):
        return 2 * super().forward(x)


def test_a_layer_with_unknown_projections_is_left_as_it_is():
    layer = tiny_model().decoder_modules().layers[0]
    q_proj = layer.self_attn.q_proj
    layer.self_attn.q_proj = _ScaledLinear(q_proj.in_features, q_proj.out_features, bias=False, dtype=torch.float64)
    k_weight = layer.self_attn.k_proj.weight
    assert fuse_layer(layer) is None
    assert layer.self_attn.k_proj.weight is k_weight


def test_add_norm_is_the_add_then_the_norm():
    model = tiny_model()
    norm = model.decoder_modules().layers[0].post_attention_layernorm
    generator = torch.Generator().manual_seed(2)
    x, delta = (torch.randn(3, norm.weight.shape[0], dtype=torch.float64, generator=generator) for _ in range(2))
    total, normed = FusedOps(is_compiled=False).add_norm(norm, x, delta)
    assert torch.equal(total, x + delta) and torch.equal(normed, norm(x + delta))


def _step_logits(runner, state, inputs, num_steps: int) -> list[torch.Tensor]:
    """The logits of `num_steps` eager decode steps after the prompt (greedy)."""
    params = SamplingParams(max_new_tokens=num_steps + 1, ignore_eos=True)
    engine = DecodeEngine(runner.decoder, state, runner.comm, params, inputs.num_tokens + inputs.rope_delta)
    engine.launch_first()
    logits = []
    for _ in range(num_steps):
        engine.launch_step()
        logits.append(engine.logits.clone())
    return logits


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@torch.inference_mode()
def test_fused_decode_steps_equal_the_unfused_ones_and_hf(arch):
    model = tiny_model(arch)
    inputs = prompt(3)
    _, reference = hf_reference(model, inputs)
    runner = ModelRunner(model, get_method(AttentionConfig(method="full", backend="torch_cpu")), SPComm.single())
    assert all(entry is not None for entry in runner.decoder.fused)
    state = runner.prefill(inputs, max_new_tokens=16)
    fused = _step_logits(runner, state, inputs, 8)
    runner.decoder.fused = [None] * len(runner.decoder.fused)  # the modules' own projections
    unfused = _step_logits(runner, state, inputs, 8)
    for step, (a, b) in enumerate(zip(fused, unfused)):
        assert torch.allclose(a, b, atol=1e-10 * b.abs().max().item(), rtol=0), step
    runner.decoder.fused = fuse_layers(model.decoder_modules().layers)
    out = runner.generate(inputs, SamplingParams(max_new_tokens=12, ignore_eos=True))
    assert out.token_ids == reference
