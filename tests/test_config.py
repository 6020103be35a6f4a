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
        ("", ["prefill.attention.method=bogus"], "prefill.attention.method: unknown method 'bogus'"),
        ("", ["prefill.attention.method=no.such.module:Method"], "prefill.attention.method"),
        ("", ["prefill.attention.backend=fast"], "prefill.attention.backend: unknown backend 'fast'"),
        ("", ["prefill.attention.scorer=magic"], "prefill.attention.scorer: unknown scorer 'magic'"),
        ("", ["decode.temperature=-1"], "decode.*: sampling: temperature must be >= 0"),
        ("", ["decode.top_p=0"], "top_p"),
        ("", ["decode.max_new_tokens=0"], "max_new_tokens must be >= 1"),
        ("", ["decode.max_new_tokens=100", "decode.max_allowed_new_tokens=50"], "decode.max_allowed_new_tokens=50"),
        ("", ["video.fps=-2"], "video.*: FrameSampling.fps"),
        ("", ["video.min_frames=9", "video.max_frames=4"], "min_frames"),
        ("", ["video.backend=vlc"], "video.backend"),
        ("", ["prefill.devices=[cuda:x]"], "prefill.devices: device 'cuda:x'"),
        ("", ["encode.devices=[cuda:0]"], "mix CPU and CUDA"),
        ("", ["runtime.dist_backend=nccl"], "runtime.dist_backend=nccl needs CUDA devices"),
        ("", ["runtime.dist_backend=mpi"], "runtime.dist_backend"),
        ("", ["runtime.log_level=LOUD"], "runtime.log_level"),
        ("", ["runtime.shm_dir=/no/such/dir"], "runtime.shm_dir '/no/such/dir' is not a directory"),
        ("", ["runtime.control_address=localhost:5555"], "runtime.control_address"),
        ("", ["runtime.restart_window_s=0"], "runtime.restart_window_s must be > 0"),
        ("", ["runtime.fork_server=maybe"], "runtime.fork_server"),
        ("", ["decode.tensor_parallel=sometimes"], "decode.tensor_parallel must be one of"),
        ("- model\n- video\n", [], "must be a mapping of sections"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_config(path, overrides)
    assert message in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config("configs/nope.yaml")
    with pytest.raises(ValueError, match="is a directory"):
        load_config(tmp_path)


def test_the_demo_file_is_the_built_in_demo():
    assert config_hash(load_config("configs/demo_cpu.yaml")) == config_hash(load_config())


def test_tensor_parallel_decode_takes_auto_on_off_and_booleans():
    assert load_config(None).decode.tensor_parallel == "auto"
    for given, want in (("on", "on"), ("off", "off"), ("true", "on"), ("false", "off"), ("AUTO", "auto")):
        assert load_config(None, [f"decode.tensor_parallel={given}"]).decode.tensor_parallel == want


def test_log_level_is_case_insensitive():
    assert load_config(None, ["runtime.log_level=warning"]).runtime.log_level == "WARNING"


def test_loading_a_config_imports_no_torch():
    import subprocess
    import sys

    code = "import sys; from spava.config import load_config; load_config('configs/demo_cpu.yaml'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_attention_names_are_the_registries_own():
    from spava.attention import backend, methods, registry, scoring
    from spava.config_checks import _table_keys_from_source

    # the torch-free method table and every method's class agree on the name and on exactness
    for entry in methods.BUILTIN_METHODS:
        cls = registry.method_class(entry.name)
        assert (cls.name, cls.is_exact) == (entry.name, entry.is_exact)
        assert cls.layout, f"{entry.name} says its layout"
    assert registry.available_methods() == [entry.name for entry in methods.BUILTIN_METHODS]
    assert registry.exact_methods() == ["full", "ring", "zigzag_ring", "ulysses"]
    assert registry.approximate_methods() == ["star", "apb", "spava"]
    assert _table_keys_from_source("spava.attention.backend", "_KERNELS") == list(backend._KERNELS)
    assert _table_keys_from_source("spava.attention.scoring", "_BUILTIN_SCORERS") == list(scoring._BUILTIN_SCORERS)


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
