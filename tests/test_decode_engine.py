"""The decode engine: device-side steps, tensor-parallel MLP / LM head, agreement of all ranks on stopping.

On W gloo ranks (float64, tiny text LM) against single-process references:
* the tensor-parallel MLP and LM head (each rank its slice of the weights, then an all-reduce /
  all-gather) equal the full modules to float64 rounding;
* greedy generation with the decode split over the ranks gives HF's tokens, as without the split;
* every rank stops at the same step for EOS, stop strings and a cancellation seen only by the
  sampling rank, and a second request after a cancelled one is served normally.
"""

from __future__ import annotations

import pytest
import torch

from spava.attention.config import AttentionConfig
from spava.attention.registry import get_method
from spava.comm.collectives import SPComm
from spava.models.decode_step import TensorParallelSlices, even_slices
from spava.models.generation import SamplingParams
from spava.models.inputs import PromptInputs
from spava.models.runner import ModelRunner

from test_text_lm import hf_reference, prompt, tiny_model


def test_even_slices_cover_the_size_once():
    for size in (1, 7, 64, 97):
        for world_size in (1, 2, 3, 4):
            bounds = even_slices(size, world_size)
            assert bounds[0][0] == 0 and bounds[-1][1] == size
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            lengths = [stop - start for start, stop in bounds]
            assert max(lengths) - min(lengths) <= 1


def _runner(model, comm, method="zigzag_ring", **kwargs):
    return ModelRunner(model, get_method(AttentionConfig(method=method, backend="torch_cpu")), comm, **kwargs)


def _tensor_parallel_parts(rank, world_size):
    model = tiny_model()
    modules = model.decoder_modules()
    comm = SPComm()
    slices = TensorParallelSlices.of(modules, rank, world_size)
    x = torch.randn(1, modules.embed_tokens.weight.shape[1], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(5))
    for index, layer in enumerate(modules.layers):
        gate, up = slices.gate_up[index]
        partial = torch.nn.functional.linear(torch.nn.functional.silu(x @ gate.T) * (x @ up.T), slices.down[index])
        assert torch.allclose(comm.all_reduce(partial), layer.mlp(x), atol=1e-12, rtol=0), index
    assert slices.vocab == even_slices(modules.lm_head.weight.shape[0], world_size)[rank]
    weight = modules.layers[0].mlp.down_proj.weight  # slices are views: no weight is copied
    assert slices.down[0].untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()


def _generation_agrees(rank, world_size):
    model = tiny_model()
    failures = []
    for seed in (0, 1):
        inputs = prompt(seed)
        _, reference = hf_reference(model, inputs)
        params = SamplingParams(max_new_tokens=12, ignore_eos=True)
        for use_tp in (True, False):
            out = _runner(model, SPComm(), use_tensor_parallel=use_tp).generate(inputs, params)
            if out.token_ids != reference:
                failures.append(f"W={world_size} rank={rank} seed={seed} tp={use_tp}: {out.token_ids} != {reference}")
    assert not failures, "\n".join(failures)


def _stopping_agrees(rank, world_size):
    model = tiny_model()
    inputs = prompt(2)
    _, reference = hf_reference(model, inputs)
    runner = _runner(model, SPComm())
    gathered = [None] * world_size

    def everyone(value):
        torch.distributed.all_gather_object(gathered, value)
        return list(gathered)

    eos = reference[4]
    out = runner.generate(inputs, SamplingParams(max_new_tokens=12), eos_token_ids=(eos,))
    assert out.finish_reason == "eos" and out.token_ids == reference[: reference.index(eos) + 1]
    assert len(set(map(tuple, everyone(out.token_ids)))) == 1

    text = lambda ids: " ".join(str(i) for i in ids)  # noqa: E731 - a tokenizer stand-in
    stop = str(reference[6])
    out = runner.generate(inputs, SamplingParams(max_new_tokens=12, ignore_eos=True, stop_strings=(stop,)),
                          decode_text=text)
    assert out.finish_reason == "stop" and stop in text(out.token_ids)
    assert len(set(map(tuple, everyone(out.token_ids)))) == 1

    seen = []
    cancel_after_3 = lambda: len(seen) >= 3  # noqa: E731 - only the sampling rank is asked
    out = runner.generate(inputs, SamplingParams(max_new_tokens=12, ignore_eos=True),
                          on_token=seen.append, should_cancel=cancel_after_3)
    assert out.finish_reason == "cancelled"
    assert len(set(everyone(len(out.token_ids)))) == 1 and len(out.token_ids) < 12

    out = runner.generate(inputs, SamplingParams(max_new_tokens=5, ignore_eos=True))
    assert out.token_ids == reference[:5] and out.finish_reason == "length"


@pytest.mark.parametrize("world_size", [2, 3])
def test_tensor_parallel_mlp_and_lm_head_equal_the_full_modules(run_ranks, world_size):
    run_ranks(_tensor_parallel_parts, world_size, timeout=120)


@pytest.mark.parametrize("world_size", [2, 3])
def test_split_decode_gives_the_tokens_of_hf(run_ranks, world_size):
    run_ranks(_generation_agrees, world_size, timeout=180)


def test_every_rank_stops_at_the_same_step(run_ranks):
    run_ranks(_stopping_agrees, 3, timeout=180)


def test_one_rank_stops_on_eos_stop_string_and_cancel(run_ranks):
    run_ranks(_stopping_agrees, 1, timeout=120)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _forced_logits(runner, state, inputs, forced: list[int], **engine_options) -> list[torch.Tensor]:
    """Logits `[V]` of the decode steps fed `forced` tokens (teacher forcing: the engine's own
    choice is overwritten before each step), from one `DecodeEngine` over `state`."""
    from spava.models.decode_step import DecodeEngine

    params = SamplingParams(max_new_tokens=len(forced) + 1, ignore_eos=True)
    engine = DecodeEngine(runner.decoder, state, runner.comm, params, inputs.num_tokens, **engine_options)
    engine.launch_first()
    logits = []
    for token in forced:
        engine.token.fill_(token)
        engine.launch_step()
        logits.append(engine.logits.clone())
    return logits


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decode_matches_eager_and_hf(dtype):
    """On CUDA, with the same forced tokens: every decode step's logits (the split-KV kernel at head_dim
    64, fused weights, compiled ops) equal HF's forward over prompt + tokens, eagerly, replayed from a
    graph captured after an eager step, and from a graph captured at the first step of a warm decoder.
    (Forced tokens, because random weights give nearly tied logits that rounding may reorder.)"""
    from transformers import LlamaConfig

    from spava.models.text_lm import TextLM

    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = TextLM.from_config(config, dtype=dtype, device="cuda", seed=0)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 512, (1500,), generator=generator)
    forced = torch.randint(3, 512, (12,), generator=generator).tolist()
    inputs = PromptInputs(input_ids=ids, position_ids=torch.arange(ids.numel()), num_query_tokens=9)
    runner = ModelRunner(model, get_method(AttentionConfig(method="full")), SPComm.single())
    with torch.inference_mode():
        reference = model.hf(torch.cat([ids, torch.tensor(forced)]).cuda()[None]).logits[0, ids.numel() - 1:].float()
        state = runner.prefill(inputs, max_new_tokens=len(forced) + 1)
        runs = {"eager": _forced_logits(runner, state, inputs, forced, use_graph=False),
                "graph after an eager step": _forced_logits(runner, state, inputs, forced, use_graph=True,
                                                            eager_steps=1)}
        assert runner.decoder.has_captured_decode
        runs["graph at the first step"] = _forced_logits(runner, state, inputs, forced, use_graph=True)
    scale = reference.abs().max().item()
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    assert (state.logits - reference[0]).abs().max().item() <= tolerance * scale
    for name, logits in runs.items():
        for step, row in enumerate(logits):
            error = (row - reference[step + 1]).abs().max().item()
            assert error <= tolerance * scale, f"{name}, step {step}: {error:.3g} > {tolerance * scale:.3g}"
