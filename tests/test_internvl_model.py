"""The InternVL3 model path against HF transformers: a tiny random-weight checkpoint saved locally
(safetensors + config.json + tokenizer), float64, CPU.

The tiny preset's `max_position_embeddings` (640) is short enough that dynamic NTK RoPE scales the
prefill of the 3-frame prompt (806 tokens) and starts scaling during the decoding of the 634-token
one, so these tests also hold spava's sharded RoPE to HF's.
"""

from __future__ import annotations

import pytest
import torch

from _internvl_tiny import hf_reference, make_prompt, reset_hf_rope, save_tiny_checkpoint, tiny_model
from spava.attention.config import AttentionConfig
from spava.attention.registry import get_method
from spava.comm.collectives import SPComm
from spava.config import ModelConfig
from spava.models.dynamic_rope import DynamicNTKRotary, dynamic_rotary
from spava.models.generation import SamplingParams
from spava.models.internvl import model as internvl_model
from spava.models.internvl.model import InternVL
from spava.models.loading import build_adapter
from spava.models.runner import ModelRunner

GREEDY_16 = SamplingParams(max_new_tokens=16, ignore_eos=True)
FULL_BUDGET = dict(anchor_len=8, passing_len=10**6, round_to=1)
# (kind, tiles, prefix tokens): 806 tokens (scaled prefill), 634 (scaling starts while decoding),
# an image of 2 tiles (538), a document of 710 tokens
PROMPTS = [("video", 3, 14), ("video", 2, 104), ("image", 2, 14), ("text", 1, 700)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("internvl3_tiny")))


@pytest.fixture(scope="module")
def model(checkpoint):
    return build_adapter(ModelConfig(path=checkpoint, dtype="float64"), ("vision", "text"), "cpu")


def _generate(model, method_name, inputs, comm, **cfg):
    method = get_method(AttentionConfig(method=method_name, backend="torch_cpu", **cfg))
    return ModelRunner(model, method, comm, mlp_chunk_size=7).generate(inputs, GREEDY_16)


def test_checkpoint_loads_through_the_family(model):
    assert isinstance(model, InternVL) and model.dtype == torch.float64
    reference = tiny_model()
    for (name, loaded), built in zip(model.hf.state_dict().items(), reference.hf.state_dict().values()):
        assert torch.equal(loaded, built), name
    modules = model.decoder_modules()
    assert modules.is_mrope is False and modules.is_rope_length_dependent is True
    assert model.visual_width == 64 and model.vision_spec.merge_size == 2


@pytest.mark.parametrize("kind,num_tiles,num_prefix", PROMPTS)
def test_full_attention_matches_hf_logits_and_greedy_tokens(model, kind, num_tiles, num_prefix):
    kwargs, inputs = make_prompt(kind, num_tiles, num_prefix=num_prefix)
    ref_logits, ref_tokens = hf_reference(model, kwargs)
    out = _generate(model, "full", inputs, SPComm.single())
    assert torch.allclose(out.first_token_logits, ref_logits, atol=1e-8, rtol=0)
    assert out.token_ids == ref_tokens
    assert out.finish_reason == "length"


def test_encode_is_hfs_image_features_in_any_number_of_calls(model, monkeypatch):
    kwargs, inputs = make_prompt("video", 3)
    with torch.inference_mode():
        expected = model.hf.model.get_image_features(pixel_values=kwargs["pixel_values"]).pooler_output.flatten(0, 1)
        grid = torch.tensor(inputs.grid_thw)
        assert torch.equal(model.encode(inputs.pixel_values, grid), expected)
        # per-tile results; other batch sizes only change how BLAS blocks the float64 sums
        monkeypatch.setattr(internvl_model, "MAX_TILES_PER_CALL", 2)
        chunked = model.encode(inputs.pixel_values, torch.tensor([[1, 32, 32]] * 3))
        assert torch.allclose(chunked, expected, atol=1e-13, rtol=0)
    with pytest.raises(ValueError, match="32x32"):
        model.encode(inputs.pixel_values, torch.tensor([[3, 16, 64]]))


def test_parts_drop_the_unused_half(checkpoint):
    vision = build_adapter(ModelConfig(path=checkpoint, dtype="float64"), ("vision",), "cpu")
    assert vision.hf.model.language_model is None and vision.hf.lm_head is None
    with pytest.raises(RuntimeError, match="language part"):
        vision.decoder_modules()
    text = build_adapter(ModelConfig(path=checkpoint, dtype="float64"), ("text",), "cpu")
    assert text.hf.model.vision_tower is None
    with pytest.raises(RuntimeError, match="vision part"):
        text.encode(torch.zeros(1024, 588), torch.tensor([[1, 32, 32]]))


def _fresh_hf_rotary(model):
    reset_hf_rope(model)
    return model.hf.model.language_model.rotary_emb


def test_dynamic_rope_matches_hf_prefill_shards_and_decode_steps(model):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_rotary = model.hf.model.language_model.rotary_emb
    ours = DynamicNTKRotary(hf_rotary)
    x = torch.zeros(1, 1, 64, dtype=torch.float64)
    for length in (1, 100, 640, 641, 1000, 5000):
        expected, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf_rotary.config, "cpu", seq_len=torch.tensor(length))
        if length <= 640:
            expected = hf_rotary.original_inv_freq
        assert torch.equal(ours.inv_freq(torch.tensor(length)), expected), length
        positions = torch.arange(length)[None]
        cos, sin = _fresh_hf_rotary(model)(x, positions)
        assert torch.equal(ours(x, positions)[0], cos) and torch.equal(ours(x, positions)[1], sin)
        # a shard of the prompt, told the prompt's length, gets the prompt's frequencies
        shard = positions[:, length // 3: length // 2 + 1]
        cos_shard, sin_shard = ours(x, shard, seq_len=length)
        assert torch.equal(cos_shard, cos[:, length // 3: length // 2 + 1])
        assert torch.equal(sin_shard, sin[:, length // 3: length // 2 + 1])
    # decode: HF's module after a 630-token prefill, then steps across max_position_embeddings
    hf_rotary = _fresh_hf_rotary(model)
    hf_rotary(x, torch.arange(630)[None])
    for position in range(630, 660):
        step = torch.tensor([[position]])
        assert all(torch.equal(a, b) for a, b in zip(hf_rotary(x, step), ours(x, step))), position
    reset_hf_rope(model)


def test_dynamic_rotary_wraps_only_dynamic_rope():
    class Rotary:
        def __init__(self, rope_type):
            self.rope_type = rope_type

    plain = Rotary("default")
    assert dynamic_rotary(plain) == (plain, False)
    with pytest.raises(ValueError, match="longrope"):
        dynamic_rotary(Rotary("longrope"))


def _distributed_cases(rank, world_size, checkpoint):
    model = build_adapter(ModelConfig(path=checkpoint, dtype="float64"), ("vision", "text"), "cpu")
    # star is exact at W = 2 only (its last block sees block 0 and itself); apb / spava at full budget
    cases = [("zigzag_ring", {}), ("ulysses", {}), ("apb", FULL_BUDGET), ("spava", FULL_BUDGET)]
    if world_size == 2:
        cases.append(("star", {}))
    failures = []
    for kind, num_tiles, num_prefix in PROMPTS[:3]:
        kwargs, inputs = make_prompt(kind, num_tiles, num_prefix=num_prefix)
        ref_logits, ref_tokens = hf_reference(model, kwargs)
        for name, cfg in cases:
            out = _generate(model, name, inputs, SPComm(), **cfg)
            tag = f"{name} W={world_size} rank={rank} {kind} x{num_tiles} ({inputs.num_tokens} tokens)"
            if out.token_ids != ref_tokens:
                failures.append(f"{tag}: tokens {out.token_ids} != {ref_tokens}")
            if out.first_token_logits is not None and not torch.allclose(out.first_token_logits, ref_logits, atol=1e-8):
                failures.append(f"{tag}: logits differ by {(out.first_token_logits - ref_logits).abs().max():.2e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("world_size", [2, 3])
def test_sequence_parallel_methods_match_hf(run_ranks, checkpoint, world_size):
    run_ranks(_distributed_cases, world_size, checkpoint, timeout=550)
