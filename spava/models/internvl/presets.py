"""InternVL3 architecture sizes, for models with random weights (tests, benchmarks).

Importing this module is light: `internvl_config` imports transformers only when called.

Where the numbers come from (the HF-converted OpenGVLab/InternVL3-*-hf checkpoints):

* Every size shares the vision tower InternViT-300M-448px-V2_5 (24 layers, width 1024, MLP 4096,
  16 heads, qkv bias, no q/k norm, LayerNorm eps 1e-6, GELU, 14-pixel patches of 448x448 tiles) and
  the converted top-level values (`downsample_ratio` 0.5, `image_seq_length` 256,
  `image_token_id` 151667, GELU projector): hf-internal-testing/tiny-processor-internvl/config.json
  (HF's processor fixture, which carries InternVL3-1B-hf's config) and transformers'
  `models/internvl/convert_internvl_weights_to_hf.py`; the ViT sizes also in Ascend/MindSpeed-MM
  `examples/qwen3vl_dev/model_internvit_qwen3.json`.
* 1b (Qwen2.5-0.5B): the same tiny-processor-internvl config.json: width 896, MLP 4864, 24 layers,
  14 heads, 2 KV heads, vocab 151674, 32768 positions, rope_theta 1e6, dynamic NTK factor 2.
* 2b (Qwen2.5-1.5B): Qwen/Qwen2.5-1.5B-Instruct/config.json (width 1536, MLP 8960, 28 layers, 12
  heads, 2 KV heads), with InternVL3's vocabulary of 151674 and its dynamic NTK factor 2.
* 8b (Qwen2.5-7B): Ascend/MindSpeed-MM `examples/internvl3/model_8B.json` (width 3584, MLP 18944,
  28 layers, 28 heads, 4 KV heads, vocab 151674, dynamic NTK factor 2).
* An untied LM head for every size: the Hub's file sizes (1.88 GB for InternVL3-1B-hf, 4.18 GB for
  -2B-hf, bf16) only add up with a separate `lm_head`.

`tiny` keeps every structural feature (GQA, q/k/v biases, dynamic NTK RoPE, which its short
`max_position_embeddings` makes prompts of a few frames cross, the 448x448 tiles and pixel shuffle).
"""

from __future__ import annotations

from typing import Any

IMAGE_TOKEN_ID = 151667  # <IMG_CONTEXT>
BOS_TOKEN_ID, EOS_TOKEN_ID = 151643, 151645  # <|endoftext|>, <|im_end|>

_VISION = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
               hidden_act="gelu", norm_type="layer_norm", layer_norm_eps=1e-6, attention_bias=True, use_qk_norm=False,
               image_size=[448, 448], patch_size=[14, 14], layer_scale_init_value=0.1,
               use_absolute_position_embeddings=True)

_TEXT = dict(model_type="qwen2", hidden_act="silu", rms_norm_eps=1e-6, max_position_embeddings=32768,
             vocab_size=151674, use_sliding_window=False, tie_word_embeddings=False, bos_token_id=BOS_TOKEN_ID,
             eos_token_id=EOS_TOKEN_ID, rope_scaling={"rope_type": "dynamic", "factor": 2.0}, rope_theta=1000000.0)

PRESETS: dict[str, dict[str, Any]] = {
    "1b": dict(text=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2), vision={}),
    "2b": dict(text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2), vision={}),
    "8b": dict(text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4), vision={}),
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=640),
                 vision=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)),
}


def _check_size(size: str) -> None:
    if size not in PRESETS:
        raise ValueError(f"unknown InternVL3 size {size!r}; choose one of {', '.join(PRESETS)}")


def vision_preset(size: str) -> dict[str, Any]:
    """The `vision_config` values of a preset, as a plain dict (no transformers import)."""
    _check_size(size)
    return {**_VISION, **PRESETS[size]["vision"]}


def config_dict(size: str) -> dict[str, Any]:
    """A preset as the dict of a config.json (what `InternVLConfig(**...)` takes)."""
    _check_size(size)
    return dict(model_type="internvl", vision_config=vision_preset(size),
                text_config={**_TEXT, **PRESETS[size]["text"]}, downsample_ratio=0.5, image_seq_length=256,
                image_token_id=IMAGE_TOKEN_ID, projector_hidden_act="gelu", vision_feature_layer=-1,
                vision_feature_select_strategy="default", tie_word_embeddings=False)


def internvl_config(size: str = "2b"):
    """An `InternVLConfig` of a preset size."""
    from transformers import InternVLConfig

    values = config_dict(size)
    values.pop("model_type")
    return InternVLConfig(**values)
