"""The Qwen2.5-VL family: its vision contract, its chat prompt, and its model on the model ranks.

Importing this module is light (no torch, no transformers): the registry resolves it at config load.
"""

from __future__ import annotations

import json
import os

from spava.models.family import ModelFamily, Processor
from spava.models.qwen2_5_vl.presets import PRESETS, qwen2_5_vl_config, vision_preset
from spava.models.vision_spec import VisionSpec

# CLIP normalisation of Qwen2-VL / Qwen2.5-VL (transformers' OPENAI_CLIP_MEAN / STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# qwen-vl-utils' video bounds (also HF's video processor defaults) and the checkpoints' image bounds.
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 128 * 28 * 28, 768 * 28 * 28
IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS = 56 * 56, 28 * 28 * 16384


def _vision_config(model_config) -> dict:
    """The `vision_config` section as a plain dict: config.json of the checkpoint, else the preset."""
    if model_config.path is None:
        return vision_preset(model_config.size)
    with open(os.path.join(model_config.path, "config.json")) as handle:
        return json.load(handle).get("vision_config", {})


def _image_pixel_bounds(model_config) -> tuple[int, int]:
    """Image min/max pixels: the checkpoint's preprocessor_config.json when present, else the defaults."""
    path = os.path.join(model_config.path, "preprocessor_config.json") if model_config.path else None
    if path is None or not os.path.isfile(path):
        return IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS
    with open(path) as handle:
        config = json.load(handle)
    size = config.get("size") or {}
    return (int(config.get("min_pixels") or size.get("shortest_edge") or IMAGE_MIN_PIXELS),
            int(config.get("max_pixels") or size.get("longest_edge") or IMAGE_MAX_PIXELS))


def make_vision_spec(vision: dict, image_min_pixels: int = IMAGE_MIN_PIXELS,
                     image_max_pixels: int = IMAGE_MAX_PIXELS):
    """The `VisionSpec` of a Qwen2.5-VL vision config (a dict of config.json's `vision_config`)."""
    return VisionSpec(
        patch_size=int(vision.get("patch_size", 14)), temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
        merge_size=int(vision.get("spatial_merge_size", 2)), image_mean=CLIP_MEAN, image_std=CLIP_STD,
        video_min_pixels=VIDEO_MIN_PIXELS, video_max_pixels=VIDEO_MAX_PIXELS,
        image_min_pixels=image_min_pixels, image_max_pixels=image_max_pixels,
    )


class Qwen25VLFamily(ModelFamily):
    """Qwen2.5-VL of any size: a local HF checkpoint (`model.path`) or random weights (`model.size`)."""

    name = "qwen2_5_vl"
    presets = tuple(PRESETS)

    def vision_spec(self):
        return make_vision_spec(_vision_config(self.model_config), *_image_pixel_bounds(self.model_config))

    def processor(self) -> "Qwen25VLProcessor":
        return Qwen25VLProcessor(self.model_config)

    def build(self, parts: tuple[str, ...], device: str):
        from spava.models.loading import resolve_device, torch_dtype
        from spava.models.qwen2_5_vl.model import Qwen25VL

        config = self.model_config
        dtype, target = torch_dtype(config.dtype), resolve_device(device)
        options = dict(dtype=dtype, device=target, parts=parts, vision_impl=config.vision_impl,
                       vision_spec=self.vision_spec())
        if config.path is not None:
            return Qwen25VL.from_pretrained(config.path, **options)
        return Qwen25VL.from_config(qwen2_5_vl_config(config.size), seed=config.seed, **options)


class Qwen25VLProcessor(Processor):
    """Qwen2.5-VL's tokenizer and chat prompt (one user turn: system, one video or image, question)."""

    def __init__(self, model_config):
        from spava.models.qwen2_5_vl.model import load_hf_config, vision_token_ids
        from spava.models.qwen2_5_vl.prompt import load_qwen_tokenizer

        self.tokenizer = load_qwen_tokenizer(model_config.tokenizer or model_config.path)
        self.token_ids = vision_token_ids(load_hf_config(model_config.path, model_config.size))

    def eos_token_ids(self) -> tuple[int, ...]:
        ids = (self.tokenizer.convert_tokens_to_ids("<|im_end|>"), self.tokenizer.eos_token_id)
        return tuple(dict.fromkeys(int(i) for i in ids if i is not None))

    def build_inputs(self, prompt: str, *, document: str | None, items: list, system_prompt: str):
        from spava.models.qwen2_5_vl.inputs import build_prompt_inputs
        from spava.models.qwen2_5_vl.prompt import build_chat_prompt, build_document_prompt

        if len(items) > 1:
            raise ValueError(f"Qwen2.5-VL prompts take one video or one image per request, got {len(items)}")
        item = items[0] if items else None
        merge = self.token_ids.spatial_merge_size
        if document is not None and item is None:
            chat = build_document_prompt(self.tokenizer, document, prompt, system_prompt)
        else:
            question = prompt if document is None else f"{document}\n\n{prompt}"
            grid = list(item.grid_thw) if item is not None else None
            chat = build_chat_prompt(self.tokenizer, question, merge_size=merge, system_prompt=system_prompt,
                                     video_grid_thw=grid if item is not None and item.kind == "video" else None,
                                     image_grid_thw=grid if item is not None and item.kind == "image" else None)
        is_video, is_image = item is not None and item.kind == "video", item is not None and item.kind == "image"
        return build_prompt_inputs(
            chat.input_ids, chat.num_query_tokens, self.token_ids,
            video_grid_thw=[list(item.grid_thw)] if is_video else None,
            image_grid_thw=[list(item.grid_thw)] if is_image else None,
            second_per_grid_ts=[item.second_per_grid] if is_video else None,
        )
