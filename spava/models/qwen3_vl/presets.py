"""Qwen3-VL (dense) architecture sizes, for building models with random weights (tests, benchmarks).

The numbers are the config.json values of the released checkpoints Qwen/Qwen3-VL-2B-Instruct,
-4B-Instruct, -8B-Instruct and -32B-Instruct on the Hugging Face hub (checked against copies of those
files: e.g. huggingface.co/TechCarbasa/MyModels .../Qwen3-VL-4B-Instruct/config.json,
huggingface.co/cdreetz/Qwen3-VL-8B-Instruct, huggingface.co/quanliang/F1 (a 32B fine-tune that keeps
the config), and the 2B values quoted by test fixtures of public Qwen3-VL ports). Shared by every
size: head_dim 128, 8 KV heads, vocabulary 151936, rope_theta 5e6, interleaved M-RoPE sections
[24, 20, 20], 262144 positions; the ViT has patch 16, 16 heads, 2304 learned position embeddings.
`tiny` is a test model that keeps every structural feature (GQA, q/k norms, interleaved M-RoPE,
DeepStack on fewer layers than the decoder has, learned position embeddings interpolated to the grid).
"""

from __future__ import annotations

from typing import Any

_VISION = dict(hidden_act="gelu_pytorch_tanh", in_channels=3, num_heads=16, patch_size=16, spatial_merge_size=2,
               temporal_patch_size=2, num_position_embeddings=2304)
_SMALL_VIT = dict(depth=24, hidden_size=1024, intermediate_size=4096, deepstack_visual_indexes=[5, 11, 17])
_LARGE_VIT = dict(depth=27, hidden_size=1152, intermediate_size=4304, deepstack_visual_indexes=[8, 16, 24])

_ROPE = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
_TEXT = dict(head_dim=128, num_key_value_heads=8, vocab_size=151936, rms_norm_eps=1e-6, hidden_act="silu",
             max_position_embeddings=262144, attention_bias=False, rope_parameters=_ROPE)

PRESETS: dict[str, dict[str, Any]] = {
    "2b": dict(text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                         tie_word_embeddings=True),
               vision=dict(_SMALL_VIT, out_hidden_size=2048)),
    "4b": dict(text=dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                         tie_word_embeddings=True),
               vision=dict(_SMALL_VIT, out_hidden_size=2560)),
    "8b": dict(text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                         tie_word_embeddings=False),
               vision=dict(_LARGE_VIT, out_hidden_size=4096)),
    "32b": dict(text=dict(hidden_size=5120, intermediate_size=25600, num_hidden_layers=64, num_attention_heads=64,
                          tie_word_embeddings=False),
                vision=dict(_LARGE_VIT, out_hidden_size=5120)),
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
                           rope_parameters={**_ROPE, "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}),
                 vision=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                             num_position_embeddings=64, deepstack_visual_indexes=[0, 1])),
}

# Qwen special token ids (identical for every size; the tokenizer is Qwen3's).
SPECIAL_TOKENS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                      vision_end_token_id=151653)
EOS_TOKEN_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>: the checkpoints' generation_config.json


def _check_size(size: str) -> None:
    if size not in PRESETS:
        raise ValueError(f"unknown Qwen3-VL size {size!r}; choose one of {', '.join(PRESETS)}")


def vision_preset(size: str) -> dict[str, Any]:
    """The `vision_config` values of a preset, as a plain dict (no transformers import)."""
    _check_size(size)
    return {**_VISION, **PRESETS[size]["vision"]}


def text_preset(size: str) -> dict[str, Any]:
    """The `text_config` values of a preset, as a plain dict (no transformers import)."""
    _check_size(size)
    return {**_TEXT, **PRESETS[size]["text"]}


def qwen3_vl_config(size: str = "8b", **text_overrides: Any):
    """A `Qwen3VLConfig` for a preset size; keyword overrides apply to the text config."""
    from transformers import Qwen3VLConfig

    text = {**text_preset(size), **text_overrides}
    tie = text.pop("tie_word_embeddings")
    return Qwen3VLConfig(text_config=text, vision_config=vision_preset(size), tie_word_embeddings=tie,
                         **SPECIAL_TOKENS)
