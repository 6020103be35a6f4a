"""The InternVL3 family (HF-converted checkpoints, model_type "internvl"): its vision contract, its
chat prompt, and its model on the model ranks.

Importing this module is light (no torch, no transformers): the registry resolves it at config load.
"""

from __future__ import annotations

import json
import os

from spava.models.family import ModelFamily, Processor
from spava.models.internvl.presets import PRESETS, config_dict, internvl_config
from spava.models.internvl.tokenizer import load_internvl_tokenizer
from spava.models.internvl.vision import make_vision_spec


def _read_json(path: str) -> dict:
    with open(path) as handle:
        return json.load(handle)


def checkpoint_config(model_config) -> dict:
    """config.json of the checkpoint as a dict, else the preset's (no transformers import)."""
    if model_config.path is None:
        return config_dict(model_config.size)
    return _read_json(os.path.join(model_config.path, "config.json"))


def _processor_config(model_config) -> dict | None:
    """preprocessor_config.json of the checkpoint (tile counts, mean / std), when there is one."""
    if model_config.path is None:
        return None
    path = os.path.join(model_config.path, "preprocessor_config.json")
    return _read_json(path) if os.path.isfile(path) else None


def _text_value(config: dict, key: str, default):
    return (config.get("text_config") or {}).get(key, default)


class InternVLFamily(ModelFamily):
    """InternVL3 of any size: a local HF checkpoint (`model.path`, e.g. OpenGVLab/InternVL3-2B-hf)
    or random weights of a preset (`model.size`: tiny, 1b, 2b, 8b). The vision tower is always HF's
    own InternViT (`model.vision_impl` has no other choice here)."""

    name = "internvl"
    presets = tuple(PRESETS)

    def validate(self) -> None:
        super().validate()
        if self.model_config.path is not None:
            text_type = _text_value(checkpoint_config(self.model_config), "model_type", "qwen2")
            if text_type not in ("qwen2", "llama"):
                raise ValueError(f"model.path {self.model_config.path!r} is an InternVL with a {text_type!r} language "
                                 "model; spava runs the Qwen2 / Llama-style InternVL3 checkpoints")

    def vision_spec(self):
        config = checkpoint_config(self.model_config)
        return make_vision_spec(config.get("vision_config") or {}, float(config.get("downsample_ratio", 0.5)),
                                _processor_config(self.model_config))

    def processor(self) -> "InternVLProcessor":
        return InternVLProcessor(self.model_config, self.vision_spec())

    def build(self, parts: tuple[str, ...], device: str):
        from spava.models.internvl.model import InternVL
        from spava.models.loading import resolve_device, torch_dtype

        config = self.model_config
        options = dict(dtype=torch_dtype(config.dtype), device=resolve_device(device), parts=parts,
                       vision_spec=self.vision_spec())
        if config.path is not None:
            return InternVL.from_pretrained(config.path, **options)
        return InternVL.from_config(internvl_config(config.size), seed=config.seed, **options)


class InternVLProcessor(Processor):
    """InternVL3's tokenizer and chat prompt (one user turn: optional system, one video or image, question)."""

    def __init__(self, model_config, vision_spec):
        from spava.models.internvl.prompt import InternVLSpecialTokens

        self.tokenizer = load_internvl_tokenizer(model_config.tokenizer or model_config.path)
        self.vision_spec = vision_spec
        config = checkpoint_config(model_config)
        self.image_token_id = int(config.get("image_token_id", 151667))
        self.tokens_per_tile = int(config.get("image_seq_length", vision_spec.tokens_per_tile))
        if self.tokens_per_tile != vision_spec.tokens_per_tile:
            raise ValueError(f"config.json's image_seq_length {self.tokens_per_tile} != {vision_spec.tokens_per_tile} "
                             "tokens per tile of its vision tower; fix the checkpoint's config.json")
        context_id = InternVLSpecialTokens.from_tokenizer(self.tokenizer).img_context
        if context_id != self.image_token_id:
            raise ValueError(f"the tokenizer's <IMG_CONTEXT> is id {context_id} but the model's image_token_id is "
                             f"{self.image_token_id}; set model.tokenizer to this checkpoint's tokenizer")
        eos = _text_value(config, "eos_token_id", None)
        self._eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ())

    def eos_token_ids(self) -> tuple[int, ...]:
        ids = (self.tokenizer.convert_tokens_to_ids("<|im_end|>"), *self._eos_ids)
        return tuple(dict.fromkeys(int(i) for i in ids if i is not None))

    def build_inputs(self, prompt: str, *, document: str | None, items: list, system_prompt: str):
        from spava.models.internvl.inputs import build_prompt_inputs
        from spava.models.internvl.prompt import build_text_prompt, build_visual_prompt

        if len(items) > 1:
            raise ValueError(f"InternVL3 prompts take one video or one image per request, got {len(items)}")
        item = items[0] if items else None
        if item is None:
            chat = build_text_prompt(self.tokenizer, prompt, document=document, system_prompt=system_prompt)
            grids = []
        else:
            question = prompt if document is None else f"{document}\n\n{prompt}"
            grids = [tuple(item.grid_thw)]
            chat = build_visual_prompt(self.tokenizer, question, kind=item.kind, num_tiles=int(item.grid_thw[0]),
                                       tokens_per_tile=self.tokens_per_tile, system_prompt=system_prompt)
        return build_prompt_inputs(chat.input_ids, chat.num_query_tokens, self.image_token_id, grids,
                                   self.tokens_per_tile)
