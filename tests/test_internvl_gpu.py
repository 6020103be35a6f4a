"""InternVL3 on a GPU (skipped without CUDA): bf16 against HF transformers.

Tolerance rule (flash-attention's, as in test_gpu.py): spava's max error against a float32
reference is at most 2x that of HF's own bf16 forward on the same weights. The 2B preset runs with
random weights and `max_position_embeddings` lowered to 2048, so the 4K-token prompt is RoPE-scaled
(dynamic NTK) as long videos are at full size.
"""

from __future__ import annotations

import copy

import pytest
import torch

from _internvl_tiny import make_prompt, reset_hf_rope
from spava.attention.config import AttentionConfig
from spava.attention.registry import get_method
from spava.comm.collectives import SPComm
from spava.models.dynamic_rope import DynamicNTKRotary
from spava.models.generation import SamplingParams
from spava.models.internvl.model import InternVL
from spava.models.internvl.presets import internvl_config
from spava.models.runner import ModelRunner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MAX_POSITIONS = 2048
NUM_FRAMES = 16  # 4,138 tokens


@pytest.fixture(scope="module")
def models():
    """(float32, bf16) copies of the 2B preset with random weights, on the GPU."""
    config = internvl_config("2b")
    config.text_config.max_position_embeddings = MAX_POSITIONS
    reference = InternVL.from_config(config, dtype=torch.float32, device="cuda", seed=0)
    with torch.no_grad():
        embeddings = reference.hf.model.vision_tower.embeddings
        embeddings.position_embeddings.normal_(std=0.5)
        embeddings.cls_token.normal_(std=0.5)
    half = InternVL(copy.deepcopy(reference.hf).to(torch.bfloat16))
    return reference, half


def _prompt():
    kwargs, inputs = make_prompt("video", NUM_FRAMES, num_prefix=14)
    kwargs = {key: value.cuda() for key, value in kwargs.items()}
    assert inputs.num_tokens > MAX_POSITIONS
    return kwargs, inputs


@torch.inference_mode()
def _hf_logits(model: InternVL, kwargs) -> torch.Tensor:
    reset_hf_rope(model)
    logits = model.hf(**kwargs, logits_to_keep=1).logits[0, -1].float()
    reset_hf_rope(model)
    return logits


def test_bf16_prefill_is_as_accurate_as_hf(models):
    reference, half = models
    kwargs, inputs = _prompt()
    expected = _hf_logits(reference, kwargs)
    hf_error = (_hf_logits(half, kwargs) - expected).abs().max().item()
    runner = ModelRunner(half, get_method(AttentionConfig(method="full")), SPComm.single())
    ours = runner.prefill(inputs).logits
    error = (ours - expected).abs().max().item()
    assert error <= 2 * hf_error + 1e-5, f"spava bf16 error {error:.3e} > 2x HF bf16's {hf_error:.3e}"


@torch.inference_mode()
def test_bf16_encode_is_hfs_image_features(models):
    _, half = models
    kwargs, inputs = _prompt()
    expected = half.hf.model.get_image_features(pixel_values=kwargs["pixel_values"]).pooler_output.flatten(0, 1)
    ours = half.encode(inputs.pixel_values.cuda(), torch.tensor(inputs.grid_thw, device="cuda"))
    assert torch.equal(ours, expected)


def test_decode_steps_as_a_cuda_graph_give_the_eager_tokens(models):
    _, half = models
    _, inputs = _prompt()
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    method = get_method(AttentionConfig(method="full"))
    eager = ModelRunner(half, method, SPComm.single(), use_cuda_graph=False).generate(inputs, params)
    graph = ModelRunner(half, method, SPComm.single(), use_cuda_graph=True).generate(inputs, params)
    assert graph.token_ids == eager.token_ids


@torch.inference_mode()
def test_dynamic_rotary_replays_in_a_cuda_graph(models):
    _, half = models
    rotary = DynamicNTKRotary(half.hf.model.language_model.rotary_emb)
    x = torch.zeros(1, 1, 8, device="cuda", dtype=torch.bfloat16)
    position = torch.full((1, 1), 100, dtype=torch.long, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            rotary(x, position)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cos, sin = rotary(x, position)
    for value in (100, MAX_POSITIONS - 1, MAX_POSITIONS, MAX_POSITIONS + 1, 5000):
        position.fill_(value)
        graph.replay()
        expected_cos, expected_sin = rotary(x, position.clone())
        assert torch.equal(cos, expected_cos) and torch.equal(sin, expected_sin), value
