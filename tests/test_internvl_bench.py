"""`spava bench` with InternVL3: its synthetic requests, HF baseline, FLOP count, and a CPU run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from _internvl_tiny import reset_hf_rope, tiny_model
from spava.attention.registry import get_method
from spava.bench.inputs import GridCase, VideoCase
from spava.comm.collectives import SPComm
from spava.models.internvl.bench import hf_first_token, make_inputs, vision_flops
from spava.models.runner import ModelRunner


def test_bench_request_is_a_frame_prompt_and_hf_agrees_on_its_first_token():
    model = tiny_model()
    inputs = make_inputs(VideoCase(1440, 2), model, pixel_dtype=torch.float64)
    assert inputs.grid_thw == [(2, 32, 32)] and inputs.pixel_values.shape == (2048, 588)
    assert inputs.vision_positions.numel() == 512 and inputs.num_query_tokens == 11
    ids = inputs.input_ids
    assert ids[inputs.vision_positions[0] - 1] == 151665 and ids[inputs.vision_positions[-1] + 1] == 151666
    assert make_inputs(GridCase((3, 32, 32), "file"), model).grid_thw == [(3, 32, 32)]
    state = ModelRunner(model, get_method("full"), SPComm.single()).prefill(inputs)
    reset_hf_rope(model)
    assert hf_first_token(model, inputs) == int(torch.argmax(state.logits))
    reset_hf_rope(model)


def _configs(num_layers: int):
    vision = SimpleNamespace(image_size=[448, 448], patch_size=[14, 14], hidden_size=32, intermediate_size=64,
                             num_hidden_layers=num_layers)
    return vision, SimpleNamespace(hidden_size=48)


def test_vision_flops_count_each_layer_once_and_the_embedding_and_projector_per_tile():
    added = vision_flops(*_configs(3), num_tiles=2) - vision_flops(*_configs(2), num_tiles=2)
    tokens, hidden, inter = 1025, 32, 64
    assert added == 2 * (2 * tokens * (4 * hidden * hidden + 2 * hidden * inter) + 4 * hidden * tokens ** 2)
    one_layer = vision_flops(*_configs(1), num_tiles=1)
    embedding, projector = 2 * 1024 * 588 * 32, 2 * 256 * (128 * 48 + 48 * 48)
    assert one_layer == added // 2 + embedding + projector


def test_spava_bench_runs_internvl_on_cpu(tmp_path):
    from spava.bench.cli import main

    args = ["--family", "internvl", "--size", "tiny", "--device", "cpu", "--dtype", "float32", "--frames", "1",
            "--resolutions", "360", "--world-sizes", "2", "--methods", "full", "hf", "zigzag_ring", "spava",
            "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)]
    assert main(args) == 0
    with open(tmp_path / "results.json") as handle:
        results = json.load(handle)["results"]
    assert {(r["method"], r["world_size"]) for r in results} == {("full", 1), ("hf", 1), ("zigzag_ring", 2),
                                                                ("spava", 2)}
    for entry in results:
        assert entry["seconds"] > 0 and entry["num_tokens"] == 14 + 258 + 11, entry
        assert entry["flops"] > 0
