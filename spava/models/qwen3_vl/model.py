"""Qwen3-VL adapter: HF transformers modules and weights, driven by spava's sharded decoder.

`Qwen3VL` wraps a `Qwen3VLForConditionalGeneration` (a local HF directory with config.json +
safetensors, or random weights from a config) and exposes:

* `encode(pixel_rows, grid_thw)`: HF's own vision tower (patch 16, learned position embeddings
  interpolated to each grid, 2-D rotary, attention cut per temporal grid). Each output row is
  `[embedding | deepstack_1 | ... | deepstack_K]`, width `d * (1 + K)` (`visual_width`): the
  DeepStack features of intermediate ViT layers travel with their token's embedding, so the
  frame-parallel routing delivers them only to the ranks holding that token.
* `place_visual(hidden, rows, features)`: writes the embeddings into the local hidden states and
  keeps the DeepStack parts; `take_layer_additions()` hands them to the runner, which has the
  decoder add part k to the output of decoder layer k at those rows (HF's `_deepstack_process`).
* `decoder_modules()`: the language model (Qwen3 layers with q/k norms, interleaved M-RoPE).

Exactness of frame-parallel encoding: HF's tower attends within one temporal grid only
(`get_vision_cu_seqlens` cuts one segment per grid) and its position embeddings and rotary angles
repeat per grid, so encoding grids apart equals encoding them together (tested).
"""

from __future__ import annotations

import os

import torch

from spava.models.adapter import HFAdapter, hf_visual_inputs, load_local_hf, random_hf
from spava.models.decoder import DecoderModules
from spava.models.family import read_model_type
from spava.models.qwen3_vl.family import make_vision_spec
from spava.models.qwen3_vl.inputs import Qwen3VLTokenIds

PARTS = ("vision", "text")
MODEL_TYPE = "qwen3_vl"


def token_ids_of(config) -> Qwen3VLTokenIds:
    """Token ids and vision sizes of a `Qwen3VLConfig`."""
    return Qwen3VLTokenIds(
        image_token_id=config.image_token_id, video_token_id=config.video_token_id,
        vision_start_token_id=config.vision_start_token_id, vision_end_token_id=config.vision_end_token_id,
        spatial_merge_size=config.vision_config.spatial_merge_size,
        temporal_patch_size=config.vision_config.temporal_patch_size,
    )


class Qwen3VL(HFAdapter):
    """Adapter over an HF Qwen3-VL model (any dense size)."""

    def __init__(self, hf_model, parts: tuple[str, ...] = PARTS, vision_spec=None):
        unknown = set(parts) - set(PARTS)
        if unknown or not parts:
            raise ValueError(f"parts must be a non-empty subset of {PARTS}, got {parts}")
        self.hf = hf_model.eval()
        self.config = hf_model.config
        self.parts = tuple(parts)
        if vision_spec is None:
            vision_spec = make_vision_spec(self.config.vision_config.to_dict())
        self.vision_spec = vision_spec  # the family's VisionSpec: preprocessing of streamed frames
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (local rows, features) of this request
        if "vision" not in parts:
            self.hf.model.visual = None
        if "text" not in parts:
            self.hf.model.language_model = None
            self.hf.lm_head = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device = "cpu", parts: tuple[str, ...] = PARTS,
                        vision_spec=None) -> "Qwen3VL":
        """Load a local HF directory (config.json + *.safetensors); nothing is downloaded."""
        from transformers import Qwen3VLForConditionalGeneration

        path = os.fspath(path)
        model_type = read_model_type(path)
        if model_type != MODEL_TYPE:
            raise ValueError(f"{path!r} is a {model_type!r} checkpoint, not a Qwen3-VL one ({MODEL_TYPE!r}); "
                             "set model.family=auto")
        hf_model = load_local_hf(Qwen3VLForConditionalGeneration, path, dtype,
                                 "set model.path to a local Qwen3-VL checkpoint, or model.size for random weights")
        return cls(hf_model.to(device), parts, vision_spec)

    @classmethod
    def from_config(cls, config, *, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                    seed: int = 0, parts: tuple[str, ...] = PARTS, vision_spec=None) -> "Qwen3VL":
        """Random weights for any size (speed does not depend on weight values)."""
        from transformers import Qwen3VLForConditionalGeneration

        return cls(random_hf(Qwen3VLForConditionalGeneration._from_config, config, dtype, device, seed), parts,
                   vision_spec)

    def token_ids(self) -> Qwen3VLTokenIds:
        return token_ids_of(self.config)

    @property
    def merge_size(self) -> int:
        return self.config.vision_config.spatial_merge_size

    @property
    def num_deepstack(self) -> int:
        """Decoder layers that receive DeepStack features (the first K)."""
        return len(self.config.vision_config.deepstack_visual_indexes)

    @property
    def visual_width(self) -> int:
        """Width of `encode`'s rows: the embedding and every DeepStack feature, `d * (1 + K)`."""
        return self.config.vision_config.out_hidden_size * (1 + self.num_deepstack)

    def encode(self, pixel_rows: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Vision tower: pixel rows `[P, 3*2*16*16]` of the grids `[G, 3]` -> `[P/4, d * (1 + K)]`."""
        visual = self.hf.model.visual
        if visual is None:
            raise RuntimeError("this rank loaded the model without its vision part (parts excludes 'vision')")
        out = visual(pixel_rows.to(visual.dtype), grid_thw=grid_thw, return_dict=True)
        return torch.cat([out.pooler_output, *out.deepstack_features], dim=1)

    def place_visual(self, hidden: torch.Tensor, local_rows: torch.Tensor, features: torch.Tensor) -> None:
        """Write the embeddings `features[:, :d]` into `hidden` `[S, d]` at `local_rows` `[n]` and keep
        the DeepStack parts for `take_layer_additions` (called once per received block of rows)."""
        width = hidden.shape[1]
        if features.shape[1] != self.visual_width or width != self.config.vision_config.out_hidden_size:
            raise ValueError(f"visual rows of width {features.shape[1]} for hidden size {width}; expected "
                             f"{self.visual_width} = {width} * (1 + {self.num_deepstack} DeepStack layers)")
        hidden.index_copy_(0, local_rows, features[:, :width].to(hidden.dtype))
        if self.num_deepstack and local_rows.numel():
            self._pending.append((local_rows, features))

    def take_layer_additions(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]] | None:
        """DeepStack additions of the rows placed since the last call: {layer k: (local rows `[n]`,
        values `[n, d]`)} for k < K, or None; clears them."""
        pending, self._pending = self._pending, []
        if not pending:
            return None
        rows = torch.cat([r for r, _ in pending])
        features = torch.cat([f for _, f in pending]) if len(pending) > 1 else pending[0][1]
        width = self.config.vision_config.out_hidden_size
        return {k: (rows, features[:, (k + 1) * width: (k + 2) * width]) for k in range(self.num_deepstack)}

    def decoder_modules(self) -> DecoderModules:
        text = self.hf.model.language_model
        if text is None:
            raise RuntimeError("this rank loaded the model without its language part (parts excludes 'text')")
        cfg = self.config.text_config
        return DecoderModules(
            embed_tokens=text.embed_tokens, layers=text.layers, norm=text.norm, rotary_emb=text.rotary_emb,
            lm_head=self.hf.lm_head, num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim, is_mrope=True,
        )

    def hf_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, grid_thw, kind: str = "video",
                  second_per_grid: float | None = None) -> dict:
        """Keyword arguments of HF's forward / generate for one prompt `[N]` with one visual item
        (baselines and equality tests). `second_per_grid` is unused: Qwen3-VL reads time from the text."""
        return hf_visual_inputs(self.config, self.device, input_ids, pixel_values, grid_thw, kind)
