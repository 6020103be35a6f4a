"""Qwen2.5-VL adapter: HF transformers modules and weights, driven by spava's sharded decoder.

`Qwen25VL` wraps a `Qwen2_5_VLForConditionalGeneration` (loaded from a local HF directory with
config.json + safetensors, or built from a config with random weights) and exposes what spava runs:
the vision tower as an `encode(pixel_rows, grid_thw)` function and the language model as
`DecoderModules`. Ranks that do not need a part drop it after loading (`parts`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from spava.models.adapter import HFAdapter, hf_visual_inputs, load_local_hf, random_hf
from spava.models.decoder import DecoderModules
from spava.models.qwen2_5_vl.family import make_vision_spec
from spava.models.qwen2_5_vl.presets import qwen2_5_vl_config
from spava.models.qwen2_5_vl.vision_fast import FastQwen25Vision

PARTS = ("vision", "text")
VISION_IMPLS = ("fast", "hf")  # spava's fused vision forward (same weights and numerics) or HF's own


@dataclass(frozen=True)
class VisionTokenIds:
    """Token ids and sizes the prompt layout needs from the model config."""

    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    spatial_merge_size: int
    tokens_per_second: float
    eos_token_ids: tuple[int, ...]


def vision_token_ids(config) -> VisionTokenIds:
    """Token ids and vision sizes of a `Qwen2_5_VLConfig`."""
    eos = getattr(config.text_config, "eos_token_id", None) if hasattr(config, "text_config") else None
    eos = eos if eos is not None else getattr(config, "eos_token_id", None)
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
    return VisionTokenIds(
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        vision_start_token_id=config.vision_start_token_id,
        spatial_merge_size=config.vision_config.spatial_merge_size,
        tokens_per_second=float(config.vision_config.tokens_per_second),
        eos_token_ids=eos_ids,
    )


def load_hf_config(path: str | None, size: str):
    """The model's `Qwen2_5_VLConfig` without loading weights: config.json of `path`, else a preset."""
    if path is None:
        return qwen2_5_vl_config(size)
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig.from_pretrained(path, local_files_only=True)


class Qwen25VL(HFAdapter):
    """Adapter over an HF Qwen2.5-VL model (any size)."""

    def __init__(self, hf_model, parts: tuple[str, ...] = PARTS, vision_impl: str = "fast", vision_spec=None):
        unknown = set(parts) - set(PARTS)
        if unknown or not parts:
            raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {parts}")
        if vision_impl not in VISION_IMPLS:
            raise ValueError(f"model.vision_impl must be one of {VISION_IMPLS}, got {vision_impl!r}")
        self.hf = hf_model.eval()
        self.config = hf_model.config
        self.parts = tuple(parts)
        self.vision_impl = vision_impl
        if vision_spec is None:
            vision_spec = make_vision_spec(self.config.vision_config.to_dict())
        self.vision_spec = vision_spec  # the family's VisionSpec: preprocessing of streamed frames
        self._fast_vision = None  # built on first use (it copies the MLP weights once)
        if "vision" not in parts:
            self.hf.model.visual = None
        if "text" not in parts:
            self.hf.model.language_model = None
            self.hf.lm_head = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device = "cpu", parts: tuple[str, ...] = PARTS,
                        vision_impl: str = "fast", vision_spec=None) -> "Qwen25VL":
        """Load a local HF directory (config.json + *.safetensors); nothing is downloaded."""
        from transformers import Qwen2_5_VLForConditionalGeneration

        hf_model = load_local_hf(Qwen2_5_VLForConditionalGeneration, path, dtype,
                                 "set model.path to a local Qwen2.5-VL checkpoint, or model.size for random weights")
        return cls(hf_model.to(device), parts, vision_impl, vision_spec)

    @classmethod
    def from_config(cls, config, *, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                    seed: int = 0, parts: tuple[str, ...] = PARTS, vision_impl: str = "fast",
                    vision_spec=None) -> "Qwen25VL":
        """Random weights for any size (speed does not depend on weight values)."""
        from transformers import Qwen2_5_VLForConditionalGeneration

        return cls(random_hf(Qwen2_5_VLForConditionalGeneration._from_config, config, dtype, device, seed), parts,
                   vision_impl, vision_spec)

    def token_ids(self) -> VisionTokenIds:
        return vision_token_ids(self.config)

    @property
    def merge_size(self) -> int:
        return self.config.vision_config.spatial_merge_size

    @property
    def visual_width(self) -> int:
        """Width of the vision tower's output rows (the LLM hidden size)."""
        return self.config.vision_config.out_hidden_size

    def encode(self, pixel_rows: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Vision tower: pixel rows `[P, 3*2*14*14]`, grid_thw `[G, 3]` -> merged embeddings `[P/4, hidden]`."""
        if self.hf.model.visual is None:
            raise RuntimeError("this rank loaded the model without its vision part (parts excludes 'vision')")
        visual = self.hf.model.visual
        if self.vision_impl == "hf":
            return visual(pixel_rows.to(visual.dtype), grid_thw=grid_thw).pooler_output
        if self._fast_vision is None:
            self._fast_vision = FastQwen25Vision(visual)
        return self._fast_vision.encode(pixel_rows, grid_thw)

    def hf_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, grid_thw, kind: str = "video",
                  second_per_grid: float | None = None) -> dict:
        """Keyword arguments of HF's forward / generate for one prompt `[N]` with one visual item
        (baselines): a video's `second_per_grid_ts` is `second_per_grid` (1.0 when None)."""
        kwargs = hf_visual_inputs(self.config, self.device, input_ids, pixel_values, grid_thw, kind)
        if pixel_values is not None and kind == "video":
            kwargs["second_per_grid_ts"] = torch.tensor([1.0 if second_per_grid is None else second_per_grid])
        return kwargs

    def decoder_modules(self) -> DecoderModules:
        text = self.hf.model.language_model
        if text is None:
            raise RuntimeError("this rank loaded the model without its language part (parts excludes 'text')")
        cfg = self.config.text_config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return DecoderModules(
            embed_tokens=text.embed_tokens, layers=text.layers, norm=text.norm, rotary_emb=text.rotary_emb,
            lm_head=self.hf.lm_head, num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
            head_dim=head_dim, is_mrope=True,
        )
