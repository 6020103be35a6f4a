"""Qwen2.5-VL architecture sizes, for building models with random weights (tests, benchmarks).

Numbers are the public config.json values of the released checkpoints; `tiny` is a test model that
keeps every structural feature (GQA, M-RoPE sections, window + full-attention ViT blocks).
"""

from __future__ import annotations

from typing import Any

_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
               spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
               tokens_per_second=2, hidden_act="silu", in_channels=3)

_TEXT = dict(rms_norm_eps=1e-6, hidden_act="silu", max_position_embeddings=128000,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})

PRESETS: dict[str, dict[str, Any]] = {
    "3b": dict(text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
               vision=dict(out_hidden_size=2048)),
    "7b": dict(text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
               vision=dict(out_hidden_size=3584)),
    "32b": dict(text=dict(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                          num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
                vision=dict(out_hidden_size=5120, intermediate_size=3456)),
    "72b": dict(text=dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False),
                vision=dict(out_hidden_size=8192, intermediate_size=3456)),
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=False,
                           rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                            "mrope_section": [2, 3, 3]}),
                 vision=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                             window_size=56, fullatt_block_indexes=[1])),
}

# Qwen2.5 special token ids (identical for every size).
SPECIAL_TOKENS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                      vision_end_token_id=151653, bos_token_id=151643, eos_token_id=151645)


def vision_preset(size: str) -> dict[str, Any]:
    """The `vision_config` values of a preset, as a plain dict (no transformers import)."""
    if size not in PRESETS:
        raise ValueError(f"unknown Qwen2.5-VL size {size!r}; choose one of {', '.join(PRESETS)}")
    return {**_VISION, **PRESETS[size]["vision"]}


def qwen2_5_vl_config(size: str = "7b", **text_overrides: Any):
    """A `Qwen2_5_VLConfig` for a preset size; keyword overrides apply to the text config."""
    from transformers import Qwen2_5_VLConfig

    if size not in PRESETS:
        raise ValueError(f"unknown Qwen2.5-VL size {size!r}; choose one of {', '.join(PRESETS)}")
    text = {**_TEXT, **PRESETS[size]["text"], **text_overrides}
    vision = {**_VISION, **PRESETS[size]["vision"]}
    tie = text.pop("tie_word_embeddings")
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **SPECIAL_TOKENS)
