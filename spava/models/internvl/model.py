"""InternVL3 adapter: HF transformers' own InternVL modules and weights, driven by spava.

`InternVL` wraps an `InternVLForConditionalGeneration` (a local HF checkpoint with config.json +
safetensors, e.g. OpenGVLab/InternVL3-2B-hf, or random weights from a config) and exposes what the
model ranks run: the vision tower as `encode(pixel_rows, grid_thw)` (HF's `get_image_features`:
InternViT, pixel shuffle, projector) and the Qwen2 language model as `DecoderModules` (plain 1-D
RoPE; dynamic NTK scaling through `spava.models.dynamic_rope`). Ranks drop the parts they do not
run (`parts`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from spava.models.adapter import HFAdapter, load_local_hf, random_hf
from spava.models.decoder import DecoderModules
from spava.models.dynamic_rope import dynamic_rotary
from spava.models.internvl.pixels import rows_to_images
from spava.models.internvl.vision import make_vision_spec

PARTS = ("vision", "text")
MAX_TILES_PER_CALL = 64  # tiles per tower call: bounds the activations ([tiles, 1025, width] per layer)


@dataclass(frozen=True)
class InternVLTokenIds:
    """Token ids the prompt layout checks against the model config."""

    image_token_id: int  # <IMG_CONTEXT>
    tokens_per_tile: int
    eos_token_ids: tuple[int, ...]


def internvl_token_ids(config) -> InternVLTokenIds:
    """Token ids of an `InternVLConfig`."""
    eos = getattr(config.text_config, "eos_token_id", None)
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    return InternVLTokenIds(int(config.image_token_id), int(config.image_seq_length), eos_ids)


def check_text_model(config) -> None:
    """Refuse language models the sharded decoder would get wrong (it runs Llama / Qwen2 layers)."""
    text = config.text_config
    if text.model_type not in ("qwen2", "llama"):
        raise ValueError(f"InternVL with a {text.model_type!r} language model is not supported; spava runs the "
                         "Qwen2 / Llama-style InternVL3 checkpoints")
    layer_types = getattr(text, "layer_types", None) or ()
    if getattr(text, "use_sliding_window", False) or any(t != "full_attention" for t in layer_types):
        raise ValueError("sliding-window attention layers are not supported by the sharded decoder; "
                         "set use_sliding_window=false in the checkpoint's text_config")


class InternVL(HFAdapter):
    """Adapter over an HF InternVL3 model (any size)."""

    def __init__(self, hf_model, parts: tuple[str, ...] = PARTS, vision_spec=None):
        unknown = set(parts) - set(PARTS)
        if unknown or not parts:
            raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {parts}")
        check_text_model(hf_model.config)
        self.hf = hf_model.eval()
        self.config = hf_model.config
        self.parts = tuple(parts)
        if vision_spec is None:
            vision_spec = make_vision_spec(self.config.vision_config.to_dict(), self.config.downsample_ratio)
        self.vision_spec = vision_spec  # preprocessing of streamed frames (an InternVisionSpec)
        self._decoder_modules = None
        if "vision" not in parts:
            self.hf.model.vision_tower = None
            self.hf.model.multi_modal_projector = None
        if "text" not in parts:
            self.hf.model.language_model = None
            self.hf.lm_head = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device = "cpu", parts: tuple[str, ...] = PARTS,
                        vision_spec=None) -> "InternVL":
        """Load a local HF directory (config.json + *.safetensors); nothing is downloaded."""
        from transformers import InternVLForConditionalGeneration

        hf_model = load_local_hf(InternVLForConditionalGeneration, path, dtype,
                                 "set model.path to a local InternVL3 -hf checkpoint, or model.size for random weights")
        return cls(hf_model.to(device), parts, vision_spec)

    @classmethod
    def from_config(cls, config, *, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                    seed: int = 0, parts: tuple[str, ...] = PARTS, vision_spec=None) -> "InternVL":
        """Random weights for any size (speed does not depend on weight values)."""
        from transformers import InternVLForConditionalGeneration

        return cls(random_hf(InternVLForConditionalGeneration._from_config, config, dtype, device, seed), parts,
                   vision_spec)

    def token_ids(self) -> InternVLTokenIds:
        return internvl_token_ids(self.config)

    @property
    def merge_size(self) -> int:
        return self.vision_spec.merge_size

    @property
    def visual_width(self) -> int:
        """Width of the vision features (the LLM hidden size, after the projector)."""
        return self.config.text_config.hidden_size

    def hf_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, grid_thw, kind: str = "video",
                  second_per_grid: float | None = None) -> dict:
        """Keyword arguments of HF's forward / generate for one prompt `[N]` with its tiles' pixel rows
        `[T*1024, 588]` (baselines): `input_ids` `[1, N]` and `pixel_values` images `[T, 3, 448, 448]`,
        on this model's device. `kind` and `second_per_grid` do not matter to InternVL."""
        kwargs = {"input_ids": torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1).to(self.device)}
        if pixel_values is not None:
            spec = self.vision_spec
            num_tiles = sum(int(grid[0]) for grid in grid_thw)
            images = rows_to_images(pixel_values, num_tiles, spec.grid_side, spec.patch_size)
            kwargs["pixel_values"] = images.to(self.device, self.dtype)
        return kwargs

    def encode(self, pixel_rows: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Pixel rows `[T*1024, 588]` of grids `[G, 3]` (t tiles of 32x32 patches each) -> features
        `[T*256, hidden]`: HF's `get_image_features` on the tiles, in order, at most
        `MAX_TILES_PER_CALL` per call (tiles never attend to each other)."""
        model = self.hf.model
        if model.vision_tower is None:
            raise RuntimeError("this rank loaded the model without its vision part (parts excludes 'vision')")
        spec = self.vision_spec
        side = spec.grid_side
        grids = grid_thw.tolist()
        if any(h != side or w != side for _, h, w in grids):
            raise ValueError(f"InternViT takes tiles of {side}x{side} patches, got grids {grids}")
        num_tiles = sum(t for t, _, _ in grids)
        images = rows_to_images(pixel_rows, num_tiles, side, spec.patch_size)
        features = []
        for start in range(0, num_tiles, MAX_TILES_PER_CALL):
            tiles = images[start: start + MAX_TILES_PER_CALL]
            pooled = model.get_image_features(pixel_values=tiles, return_dict=True).pooler_output
            features.append(pooled.reshape(-1, pooled.shape[-1]))
        return features[0] if len(features) == 1 else torch.cat(features)

    def decoder_modules(self) -> DecoderModules:
        text = self.hf.model.language_model
        if text is None:
            raise RuntimeError("this rank loaded the model without its language part (parts excludes 'text')")
        if self._decoder_modules is None:
            cfg = self.config.text_config
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            rotary, is_length_dependent = dynamic_rotary(text.rotary_emb)
            self._decoder_modules = DecoderModules(
                embed_tokens=text.embed_tokens, layers=text.layers, norm=text.norm, rotary_emb=rotary,
                lm_head=self.hf.lm_head, num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
                head_dim=head_dim, is_mrope=False, is_rope_length_dependent=is_length_dependent,
            )
        return self._decoder_modules
