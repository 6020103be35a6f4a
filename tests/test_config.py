"""Config loading: YAML + overrides, validated once, errors name the field; shipped configs load."""

from __future__ import annotations

import glob

import pytest

from spava.comm.messages import (
    CancelReq, EncodeBatchReq, LayoutTaskOutput, MessageError, ModelTaskReq, SubmitReq, TensorRef, VideoPlanOutput,
    VideoTaskOutput, VisualItem, decode_message, encode_message,
)
from spava.config import config_hash, load_config


@pytest.mark.parametrize("path", sorted(glob.glob("configs/*.yaml")))
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.world_size >= 1
    assert config.prefill.attention.method in ("full", "spava")


def test_overrides_and_hash():
    config = load_config("configs/demo_cpu.yaml", ["prefill.attention.method=zigzag_ring", "decode.max_new_tokens=7"])
    assert config.prefill.attention.method == "zigzag_ring" and config.decode.max_new_tokens == 7
    assert config_hash(config) != config_hash(load_config("configs/demo_cpu.yaml"))


@pytest.mark.parametrize(
    "text,overrides,message",
    [
        ("prefill:\n  bogus: 1\n", [], "Key 'bogus' not in 'PrefillConfig' (full_key: prefill.bogus)"),
        ("", ["decode.max_new_tokens=many"], "full_key: decode.max_new_tokens"),
        ("", ["prefill.attention.pool_window=4"], "prefill.attention.pool_window"),
        ("", ["model.dtype=int3"], "model.dtype"),
        ("", ["prefill.devices=[]"], "prefill.devices"),
        ("", ["encode.devices=[tpu]"], "encode.devices"),
        ("", ["encode.max_batch_requests=0"], "encode.max_batch_requests must be >= 1"),
        ("", ["encode.max_batch_patches=0"], "encode.max_batch_patches must be >= 1"),
        ("", ["stages.video=not_a_path"], "stages.video"),
        ("", ["runtime.heartbeat_timeout_s=0.1"], "runtime.heartbeat_timeout_s"),
        ("model: [unclosed\n", [], "invalid config"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_config(path, overrides)
    assert message in str(error.value)


def test_missing_config_file():
    with pytest.raises(ValueError, match="does not exist"):
        load_config("configs/nope.yaml")


def test_messages_round_trip_and_reject_bad_input():
    ref = TensorRef("/dev/shm/x", [3, 4], "float32")
    item = VisualItem("video", TensorRef("/dev/shm/f", [4, 56, 84, 3], "uint8"), "/dev/shm/p", [2, 4, 6], [56, 84],
                      [0.0, 0.5, 1.0, 1.5], 1.0)
    layout = LayoutTaskOutput("r1", ref, ref, ref, [item], 5, -3, 12, 0.5)
    assert layout.grid_thw == [[2, 4, 6]]
    batch = EncodeBatchReq([ModelTaskReq("r1", 7, layout, {}), ModelTaskReq("r2", 8, layout, {"top_k": 2})])
    for message in (SubmitReq("r1", "hi", "path", "/v.mp4", sampling={"top_k": 3}), CancelReq("r1"),
                    ModelTaskReq("r1", 7, layout, {"temperature": 0.5}), batch, VideoPlanOutput("r1", [item], 0.1),
                    VideoTaskOutput("r1", 4, 0.2, ["decoded 2.1 s of 5.0 s"])):
        assert decode_message(encode_message(message)) == message
    with pytest.raises(MessageError, match="EncodeBatchReq.tasks"):
        decode_message(encode_message(EncodeBatchReq(["not a task"])))
    with pytest.raises(MessageError, match="expected str"):
        decode_message(encode_message(CancelReq(5)))
    with pytest.raises(MessageError):
        encode_message(object())


def test_short_input_rule_picks_the_exact_method_below_the_threshold():
    from spava.attention.registry import ShortInputRule, get_method

    config = load_config(None, ["prefill.min_tokens_per_rank=4096"])
    rule = ShortInputRule.from_config(config.prefill)
    spava, ring = get_method("spava"), get_method("ring")
    assert rule.choose(spava, 4096 * 4 - 1, 4).name == "zigzag_ring"
    assert rule.choose(spava, 4096 * 4, 4) is spava
    assert rule.choose(spava, 100, 1) is spava  # one rank: nothing to save
    assert rule.choose(ring, 100, 4) is ring  # exact methods stay
    assert ShortInputRule.from_config(load_config().prefill) is None  # 0 = off, the default
    with pytest.raises(ValueError, match="exact"):
        load_config(None, ["prefill.min_tokens_per_rank=10", "prefill.short_input_method=apb"])
