"""The prefill memory check (`spava.models.memory`): the estimate's arithmetic, the refusal message,
agreement of every rank on refusing (gloo, W = 2), and on a GPU the estimate against the measured peak."""

from __future__ import annotations

import pytest
import torch

from spava.attention.config import AttentionConfig
from spava.attention.registry import get_method
from spava.comm.collectives import SPComm
from spava.models.generation import SamplingParams
from spava.models.memory import GIB, DecoderShape, OverBudgetError, check_fits, estimate_prefill_memory
from spava.models.runner import ModelRunner
from test_text_lm import prompt, tiny_model

QWEN25_7B = DecoderShape(num_layers=28, hidden_size=3584, intermediate_size=18944, num_heads=28, num_kv_heads=4,
                         head_dim=128, dtype_bytes=2)


@pytest.mark.parametrize("is_compiled", [False, True])
def test_estimate_counts_cache_and_the_largest_layer_phase(is_compiled):
    shape = DecoderShape(num_layers=3, hidden_size=10, intermediate_size=20, num_heads=4, num_kv_heads=2,
                         head_dim=5, dtype_bytes=4)
    need = estimate_prefill_memory(shape, num_local_tokens=100, num_owned_tokens=60, extra_capacity=7,
                                   mlp_chunk_size=16, is_compiled=is_compiled)
    kv_row, q_row = 2 * 5, 4 * 5
    assert need.kv_cache_bytes == 3 * 2 * (60 + 7) * kv_row * 4
    rope = 0 if is_compiled else 2 * q_row
    projections = 100 * (10 + 2 * q_row + 3 * kv_row + rope)
    attention = 100 * (2 * q_row + 10 + 2 * kv_row) + 2 * 60 * kv_row
    assert need.activation_bytes == (max(projections, attention) + 2 * 100 * 5) * 4
    # a short prompt with a wide MLP: the MLP chunk is the largest phase
    wide = DecoderShape(3, 10, 400, 4, 2, 5, 4)
    short = estimate_prefill_memory(wide, num_local_tokens=5, num_owned_tokens=5, extra_capacity=0,
                                    mlp_chunk_size=16, is_compiled=is_compiled)
    assert short.activation_bytes == (5 * ((3 if is_compiled else 4) * 400 + 2 * 10) + 2 * 5 * 5) * 4


def test_qwen25_7b_kv_cache_at_256_frames_of_1440p():
    """594K tokens on one rank: 28 layers x K and V x 4 heads x 128 x bf16 = 56 KiB a token, 31.7 GiB."""
    need = estimate_prefill_memory(QWEN25_7B, 594_000, 594_000, 65, 8192)
    assert need.kv_cache_bytes == 28 * 2 * (594_000 + 65) * 4 * 128 * 2
    assert 31.5 < need.kv_cache_bytes / GIB < 32.0
    assert need.activation_bytes / GIB < 25  # one layer's Q/K/V phase dominates: [S, d + 4Hd + 3Hkv d]


def test_refusal_names_the_need_and_what_to_change():
    need = estimate_prefill_memory(QWEN25_7B, 594_000, 594_000, 65, 8192)
    assert check_fits(need, need.total_bytes, rank=0, world_size=1, num_tokens=594_000) is None
    message = check_fits(need, 40 * GIB, rank=0, world_size=1, num_tokens=594_000)
    assert "594000 tokens" in message and "40.0 GiB are free" in message and "model rank 0" in message
    for key in ("video.max_frames", "video.fps", "video.max_pixels", "prefill.world_size"):
        assert key in message


def _runner(comm):
    method = get_method(AttentionConfig(method="zigzag_ring", backend="torch_cpu"))
    return ModelRunner(tiny_model(), method, comm)


def _every_rank_refuses_alike(rank, world_size):
    runner = _runner(SPComm())
    inputs = prompt(0)
    plan = runner.method.plan(inputs.num_tokens, inputs.num_query_tokens, world_size, rank)
    hidden = runner.decoder.embed(plan.slice_local(inputs.input_ids))
    runner.check_memory(plan, hidden, extra_capacity=13, free_bytes=GIB)  # fits everywhere: no error
    free = GIB if rank == 0 else 100  # only the last rank is short
    with pytest.raises(OverBudgetError) as refused:
        runner.check_memory(plan, hidden, extra_capacity=13, free_bytes=free)
    assert f"model rank {world_size - 1}" in str(refused.value) and "0.0 GiB are free" in str(refused.value)
    # the refusal left nothing behind: the same runner serves the request
    out = runner.generate(inputs, SamplingParams(max_new_tokens=3, ignore_eos=True))
    assert len(out.token_ids) == 3


@pytest.mark.slow
def test_every_rank_refuses_when_one_rank_is_short(run_ranks):
    run_ranks(_every_rank_refuses_alike, 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("is_compiled", [True, False])
def test_estimate_bounds_the_measured_peak_on_gpu(is_compiled):
    """A 7B-wide decoder (2 layers, bf16, 48K tokens, `full`), elementwise ops compiled or eager: the
    estimate is at least the measured growth of allocated memory during the layers, and not more
    than 1.25x it."""
    from transformers import Qwen2Config

    from spava.models.fused_ops import FusedOps
    from spava.models.inputs import PromptInputs
    from spava.models.text_lm import TextLM

    config = Qwen2Config(vocab_size=1024, hidden_size=3584, intermediate_size=18944, num_hidden_layers=2,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=65536,
                         use_sliding_window=False, tie_word_embeddings=False)
    model = TextLM.from_config(config, dtype=torch.bfloat16, seed=0, device="cuda")
    runner = ModelRunner(model, get_method(AttentionConfig(method="full", backend="torch_cuda")), SPComm.single())
    runner.decoder.ops = FusedOps(is_compiled)
    num_tokens = 48_000
    inputs = PromptInputs(input_ids=torch.randint(3, 1000, (num_tokens,)), position_ids=torch.arange(num_tokens),
                          num_query_tokens=32)
    plan = runner.method.plan(num_tokens, 32, 1, 0)
    hidden = runner.decoder.embed(inputs.input_ids.cuda())
    need = estimate_prefill_memory(runner.decoder_shape(hidden), num_tokens, num_tokens, 65,
                                   runner.decoder.mlp_chunk_size, is_compiled)
    ctx = runner.method.context(plan, runner.comm, runner.device)
    positions = plan.slice_local(inputs.position_ids).cuda()
    with torch.inference_mode():  # a first pass compiles (its transient memory is not the layers')
        runner.decoder.prefill(hidden.clone(), positions, ctx, extra_capacity=65)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        runner.decoder.prefill(hidden, positions, ctx, extra_capacity=65)
    measured = torch.cuda.max_memory_allocated() - before
    assert measured <= need.total_bytes, (measured / GIB, need.total_bytes / GIB)
    assert need.total_bytes <= 1.25 * measured, (measured / GIB, need.total_bytes / GIB)
