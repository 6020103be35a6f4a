"""The Qwen2.5-VL model path against HF transformers (tiny random weights, float64, CPU)."""

from __future__ import annotations

import pytest
import torch

from _qwen_tiny import hf_reference, make_prompt, prompt_inputs, tiny_model
from spava.attention.config import AttentionConfig
from spava.attention.registry import get_method
from spava.comm.collectives import SPComm
from spava.models.generation import SamplingParams
from spava.models.runner import ModelRunner

GREEDY_16 = SamplingParams(max_new_tokens=16, ignore_eos=True)
FULL_BUDGET = dict(anchor_len=8, passing_len=10**6, round_to=1)


def _generate(model, method_name, inputs, comm, **cfg):
    method = get_method(AttentionConfig(method=method_name, backend="torch_cpu", **cfg))
    runner = ModelRunner(model, method, comm, mlp_chunk_size=7)
    return runner.generate(inputs, GREEDY_16)


@pytest.mark.parametrize("kind", ["video", "image", "text"])
def test_full_attention_matches_hf_logits_and_greedy_tokens(kind):
    model = tiny_model()
    hf_kwargs, input_ids = make_prompt(kind, grid=(4, 8, 10) if kind == "video" else (1, 10, 14))
    ref_logits, ref_tokens = hf_reference(model, hf_kwargs)
    out = _generate(model, "full", prompt_inputs(model, hf_kwargs, input_ids), SPComm.single())
    assert torch.allclose(out.first_token_logits, ref_logits, atol=1e-8, rtol=0)
    assert out.token_ids == ref_tokens
    assert out.finish_reason == "length"


CASES = [
    ("ring", {}), ("zigzag_ring", {}), ("ulysses", {}), ("spava", FULL_BUDGET), ("apb", FULL_BUDGET),
]


def _distributed_cases(rank, world_size):
    model = tiny_model()
    failures = []
    for kind, grid in (("video", (4, 8, 10)), ("video", (1, 8, 10)), ("image", (1, 10, 14)), ("text", (1, 1, 1))):
        hf_kwargs, input_ids = make_prompt(kind, grid=grid, num_prefix=60 if kind == "text" else 14)
        ref_logits, ref_tokens = hf_reference(model, hf_kwargs)
        inputs = prompt_inputs(model, hf_kwargs, input_ids)
        for name, cfg in CASES:
            out = _generate(model, name, inputs, SPComm(), **cfg)
            tag = f"{name} W={world_size} rank={rank} {kind} grid={grid}"
            if out.token_ids != ref_tokens:
                failures.append(f"{tag}: tokens {out.token_ids} != {ref_tokens}")
            if out.first_token_logits is not None and not torch.allclose(out.first_token_logits, ref_logits, atol=1e-8):
                failures.append(f"{tag}: logits differ by {(out.first_token_logits - ref_logits).abs().max():.2e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_sequence_parallel_methods_match_hf_tokens(run_ranks, world_size):
    run_ranks(_distributed_cases, world_size, timeout=500)
