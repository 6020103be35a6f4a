"""`spava bench` with InternVL3: the family's synthetic request, HF's baseline on it, FLOPs, a CPU run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from _internvl_tiny import reset_hf_rope, tiny_model
from spava.attention.registry import get_method
from spava.bench.flops import internvl_vision_flops
from spava.bench.harness import _hf_first_token
from spava.bench.inputs import GridCase, VideoCase, make_inputs
from spava.comm.collectives import SPComm
from spava.models.runner import ModelRunner


def test_bench_request_is_a_frame_prompt_and_hf_agrees_on_its_first_token():
    model = tiny_model()
    processor = tiny_processor()
    inputs = make_inputs(VideoCase(1440, 2), processor, model.vision_spec, pixel_dtype=torch.float64)
    assert inputs.grid_thw == [(2, 32, 32)] and inputs.pixel_values.shape == (2048, 588)
    assert inputs.vision_positions.numel() == 512
    assert make_inputs(GridCase((3, 32, 32), "file"), processor, model.vision_spec).grid_thw == [(3, 32, 32)]
    state = ModelRunner(model, get_method("full"), SPComm.single()).prefill(inputs)
    reset_hf_rope(model)
    kwargs = model.hf_inputs(inputs.input_ids, inputs.pixel_values, inputs.grid_thw)
    with torch.inference_mode():
        logits = model.hf(**kwargs, logits_to_keep=1).logits[0, -1]
    assert int(torch.argmax(logits)) == int(torch.argmax(state.logits))
    reset_hf_rope(model)
    _hf_first_token(model, inputs)  # the harness's HF baseline runs on the family's request
    reset_hf_rope(model)


def tiny_processor():
    from spava.config import ModelConfig
    from spava.models.family import get_family

    return get_family(ModelConfig(family="internvl", size="tiny")).processor()


def _configs(num_layers: int):
    vision = SimpleNamespace(image_size=[448, 448], patch_size=[14, 14], hidden_size=32, intermediate_size=64,
                             num_hidden_layers=num_layers)
    return vision, SimpleNamespace(hidden_size=48)


def test_vision_flops_count_each_layer_once_and_the_embedding_and_projector_per_tile():
    added = internvl_vision_flops(*_configs(3), num_tiles=2) - internvl_vision_flops(*_configs(2), num_tiles=2)
    tokens, hidden, inter = 1025, 32, 64
    assert added == 2 * (2 * tokens * (4 * hidden * hidden + 2 * hidden * inter) + 4 * hidden * tokens ** 2)
    one_layer = internvl_vision_flops(*_configs(1), num_tiles=1)
    embedding, projector = 2 * 1024 * 588 * 32, 2 * 256 * (128 * 48 + 48 * 48)
    assert one_layer == added // 2 + embedding + projector


@pytest.mark.slow  # spawns the benchmark's ranks
def test_spava_bench_runs_internvl_on_cpu(tmp_path):
    from spava.bench.cli import main

    args = ["--model", "internvl", "--size", "tiny", "--device", "cpu", "--dtype", "float32", "--frames", "1",
            "--resolutions", "360", "--world-sizes", "2", "--methods", "full", "hf", "zigzag_ring", "spava",
            "--repeats", "1", "--warmup", "0", "--out", str(tmp_path)]
    assert main(args) == 0
    with open(tmp_path / "results.json") as handle:
        results = json.load(handle)["results"]
    assert {(r["method"], r["world_size"]) for r in results} == {("full", 1), ("hf", 1), ("zigzag_ring", 2),
                                                                ("spava", 2)}
    for entry in results:
        assert entry["seconds"] > 0 and entry["num_tokens"] > 256, entry
        assert entry["flops"] > 0
