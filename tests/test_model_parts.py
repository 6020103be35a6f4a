"""Model path pieces: real checkpoint loading, sampling and stopping, vision routing, KV cache."""

from __future__ import annotations

import pytest
import torch

from _qwen_tiny import make_prompt, prompt_inputs, tiny_model
from spava.attention.registry import get_method
from spava.attention.spava import plan_spava
from spava.comm.collectives import SPComm
from spava.models.decode_step import DeviceSampler
from spava.models.generation import SamplingParams
from spava.models.kv_cache import LayerKVCache
from spava.models.qwen2_5_vl.model import Qwen25VL
from spava.models.runner import ModelRunner
from spava.models.vision_parallel import assign_units, plan_route_table, plan_vision_units


def test_local_safetensors_checkpoint_loads_and_matches(tmp_path):
    model = tiny_model(torch.float64)
    model.hf.save_pretrained(tmp_path)
    assert list(tmp_path.glob("*.safetensors")), "save_pretrained must write safetensors"
    loaded = Qwen25VL.from_pretrained(tmp_path, dtype=torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(model.hf.state_dict().values(), loaded.hf.state_dict().values()))
    hf_kwargs, input_ids = make_prompt("video", grid=(2, 8, 10))
    inputs = prompt_inputs(model, hf_kwargs, input_ids)
    logits = [ModelRunner(m, get_method("full"), SPComm.single()).prefill(inputs).logits for m in (model, loaded)]
    # same weights; only BLAS blocking (memory alignment) can differ, far below float64 precision
    assert (logits[0] - logits[1]).abs().max() < 1e-12


def test_ranks_can_drop_the_part_they_do_not_run(tmp_path):
    encoder_only = Qwen25VL(tiny_model(torch.float32).hf, parts=("vision",))
    assert encoder_only.hf.model.language_model is None and encoder_only.hf.lm_head is None
    with pytest.raises(RuntimeError, match="without its language part"):
        encoder_only.decoder_modules()
    text_only = Qwen25VL(tiny_model(torch.float32).hf, parts=("text",))
    with pytest.raises(RuntimeError, match="without its vision part"):
        text_only.encode(torch.zeros(4, 1176), torch.tensor([[1, 2, 2]]))
    with pytest.raises(ValueError, match="not a Hugging Face model directory"):
        Qwen25VL.from_pretrained(tmp_path)


def test_mismatched_placeholders_are_a_clear_error():
    model = tiny_model(torch.float32)
    hf_kwargs, input_ids = make_prompt("video", grid=(2, 8, 10))
    hf_kwargs["video_grid_thw"] = torch.tensor([[4, 8, 10]])
    with pytest.raises(ValueError, match="40 video placeholder tokens but the video grids need 80"):
        prompt_inputs(model, hf_kwargs, input_ids)


def _draw(sampler, logits, num_draws):
    out = torch.zeros(1, dtype=torch.long)
    draws = []
    for _ in range(num_draws):
        sampler(logits, out)
        draws.append(int(out))
    return draws


def test_sampling_filters_and_seed():
    logits = torch.tensor([0.0, 5.0, 4.9, -3.0, 1.0])
    cpu = torch.device("cpu")
    assert _draw(DeviceSampler(SamplingParams(), cpu), logits, 3) == [1, 1, 1]
    top1 = SamplingParams(temperature=1.0, top_k=1, seed=3)
    assert set(_draw(DeviceSampler(top1, cpu), logits, 20)) == {1}
    nucleus = SamplingParams(temperature=1.0, top_p=0.6, seed=0)
    assert set(_draw(DeviceSampler(nucleus, cpu), logits, 50)) <= {1, 2}
    hot = SamplingParams(temperature=5.0, seed=7)
    first, again = _draw(DeviceSampler(hot, cpu), logits, 30), _draw(DeviceSampler(hot, cpu), logits, 30)
    assert first == again and len(set(first)) > 2
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1), dict(max_new_tokens=0)):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_gumbel_sampling_draws_from_the_softmax():
    logits = torch.tensor([1.0, 0.2, -0.5, 2.0, 0.0])
    params = SamplingParams(temperature=1.5, seed=11)
    num_draws = 4000
    counts = torch.bincount(torch.tensor(_draw(DeviceSampler(params, torch.device("cpu")), logits, num_draws)),
                            minlength=5).double()
    expected = torch.softmax(logits.double() / 1.5, dim=0) * num_draws
    sigma = (expected * (1 - expected / num_draws)).sqrt()
    assert ((counts - expected).abs() <= 4 * sigma).all(), (counts, expected)


def test_generation_stops_on_eos_stop_token_and_stop_string():
    model = tiny_model(torch.float32)
    hf_kwargs, input_ids = make_prompt("text")
    inputs = prompt_inputs(model, hf_kwargs, input_ids)
    runner = ModelRunner(model, get_method("full"), SPComm.single())
    free = runner.generate(inputs, SamplingParams(max_new_tokens=6, ignore_eos=True))
    assert len(free.token_ids) == 6 and free.finish_reason == "length"
    third = free.token_ids[2]
    as_eos = runner.generate(inputs, SamplingParams(max_new_tokens=6), eos_token_ids=(third,))
    assert as_eos.token_ids == free.token_ids[:3] and as_eos.finish_reason == "eos"
    as_stop = runner.generate(inputs, SamplingParams(max_new_tokens=6, stop_token_ids=(third,)))
    assert as_stop.token_ids == free.token_ids[:3]

    def decode_text(ids):
        return " ".join(f"t{i}" for i in ids)

    stop_text = runner.generate(inputs, SamplingParams(max_new_tokens=6, stop_strings=(f"t{free.token_ids[1]}",)),
                                decode_text=decode_text)
    assert stop_text.token_ids == free.token_ids[:2] and stop_text.finish_reason == "stop"


def test_vision_routes_send_each_rank_exactly_the_tokens_it_holds():
    grid_thw = [(1, 6, 8), (6, 8, 10)]
    units = plan_vision_units(grid_thw, merge_size=2)
    assert len(units) == 7 and units[-1].token_stop == 12 + 6 * 20
    num_vis = units[-1].token_stop
    num_tokens, world_size = 20 + num_vis + 15, 3
    positions = torch.arange(20, 20 + num_vis)
    plans = tuple(plan_spava(num_tokens, 15, world_size, r, anchor_len=24) for r in range(world_size))
    assignment = assign_units(units, world_size)
    assert assignment[0][0] == 0 and assignment[-1][1] == len(units)
    table = plan_route_table(units, assignment, positions, plans)
    for rank, plan in enumerate(plans):
        held = set(plan.local_token_ids().tolist()) & set(positions.tolist())
        received = sum(int(table.recv_positions[rank][e].numel()) for e in range(world_size))
        sent_to_me = sum(int(table.send_rows[e][rank].numel()) for e in range(world_size))
        assert received == sent_to_me == len(held) < num_vis
    one_encoder = plan_route_table(units, assign_units(units, 1), positions, plans)  # disaggregated: E=1
    assert [int(sum(r.numel() for r in one_encoder.send_rows[0][w:w + 1])) for w in range(world_size)] == [
        int(table.recv_positions[w][0].numel() + table.recv_positions[w][1].numel() + table.recv_positions[w][2].numel())
        for w in range(world_size)]


def test_fewer_units_than_encoders_leaves_some_idle():
    units = plan_vision_units([(2, 4, 4)], merge_size=2)
    assert assign_units(units, 4) == ((0, 1), (1, 1), (1, 2), (2, 2))
    assert assign_units(plan_vision_units([(7, 4, 4)], merge_size=2), 3) == ((0, 2), (2, 5), (5, 7))


def test_kv_cache_appends_in_place_and_grows():
    cache = LayerKVCache(torch.zeros(3, 2, 4), torch.zeros(3, 2, 4), extra_capacity=1)
    for step in range(5):
        cache.append(torch.full((1, 2, 4), float(step)), torch.full((1, 2, 4), float(step)))
    assert cache.k.shape == (8, 2, 4) and cache.k[-1, 0, 0] == 4.0 and cache.v[3, 1, 2] == 0.0
