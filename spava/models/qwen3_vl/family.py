"""The Qwen3-VL family (dense 2B / 4B / 8B / 32B): vision contract, chat prompt, model on the ranks.

Importing this module is light (no torch, no transformers): the registry resolves it at config load.
The vision tower is HF's own for both `model.vision_impl` values (spava's fused tower is Qwen2.5-VL's).
"""

from __future__ import annotations

import json
import os

from spava.models.family import ModelFamily, Processor
from spava.models.qwen3_vl.presets import EOS_TOKEN_IDS, PRESETS, SPECIAL_TOKENS, qwen3_vl_config, vision_preset
from spava.models.vision_spec import VisionSpec

# Qwen3-VL's preprocessor_config.json (image_mean / image_std 0.5: [-1, 1] inputs).
IMAGE_MEAN = IMAGE_STD = (0.5, 0.5, 0.5)
# Images: the checkpoints' preprocessor_config.json size (shortest_edge / longest_edge), 64 and 16384
# merged 32x32 patches. Videos, per frame: qwen-vl-utils' 128 and 768 tokens of 32x32 pixels.
IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS = 65536, 16777216
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 128 * 32 * 32, 768 * 32 * 32


def _read_json(path: str | None, name: str) -> dict:
    file = os.path.join(path, name) if path else None
    if file is None or not os.path.isfile(file):
        return {}
    with open(file) as handle:
        return json.load(handle)


def _vision_config(model_config) -> dict:
    """`vision_config` as a plain dict: the checkpoint's config.json, else the preset."""
    if model_config.path is None:
        return vision_preset(model_config.size)
    return _read_json(model_config.path, "config.json").get("vision_config", {})


def _image_pixel_bounds(model_config) -> tuple[int, int]:
    """Image min/max pixels: the checkpoint's preprocessor_config.json when present, else the defaults."""
    config = _read_json(model_config.path, "preprocessor_config.json")
    size = config.get("size") or {}
    return (int(config.get("min_pixels") or size.get("shortest_edge") or IMAGE_MIN_PIXELS),
            int(config.get("max_pixels") or size.get("longest_edge") or IMAGE_MAX_PIXELS))


def make_vision_spec(vision: dict, image_min_pixels: int = IMAGE_MIN_PIXELS, image_max_pixels: int = IMAGE_MAX_PIXELS):
    """The `VisionSpec` of a Qwen3-VL vision config (a dict of config.json's `vision_config`)."""
    return VisionSpec(
        patch_size=int(vision.get("patch_size", 16)), temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
        merge_size=int(vision.get("spatial_merge_size", 2)), image_mean=IMAGE_MEAN, image_std=IMAGE_STD,
        video_min_pixels=VIDEO_MIN_PIXELS, video_max_pixels=VIDEO_MAX_PIXELS,
        image_min_pixels=image_min_pixels, image_max_pixels=image_max_pixels,
    )


def token_ids_from_config(model_config):
    """`Qwen3VLTokenIds` from the checkpoint's config.json (or the preset), without transformers."""
    from spava.models.qwen3_vl.inputs import Qwen3VLTokenIds

    config = _read_json(model_config.path, "config.json") if model_config.path else dict(SPECIAL_TOKENS)
    vision = _vision_config(model_config)
    return Qwen3VLTokenIds(
        image_token_id=int(config.get("image_token_id", SPECIAL_TOKENS["image_token_id"])),
        video_token_id=int(config.get("video_token_id", SPECIAL_TOKENS["video_token_id"])),
        vision_start_token_id=int(config.get("vision_start_token_id", SPECIAL_TOKENS["vision_start_token_id"])),
        vision_end_token_id=int(config.get("vision_end_token_id", SPECIAL_TOKENS["vision_end_token_id"])),
        spatial_merge_size=int(vision.get("spatial_merge_size", 2)),
        temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
    )


class Qwen3VLFamily(ModelFamily):
    """Qwen3-VL (dense): a local HF checkpoint (`model.path`) or random weights (`model.size`)."""

    name = "qwen3_vl"
    presets = tuple(PRESETS)

    def vision_spec(self):
        return make_vision_spec(_vision_config(self.model_config), *_image_pixel_bounds(self.model_config))

    def processor(self) -> "Qwen3VLProcessor":
        return Qwen3VLProcessor(self.model_config)

    def build(self, parts: tuple[str, ...], device: str):
        from spava.models.loading import resolve_device, torch_dtype
        from spava.models.qwen3_vl.model import Qwen3VL

        config = self.model_config
        options = dict(dtype=torch_dtype(config.dtype), device=resolve_device(device), parts=parts,
                       vision_spec=self.vision_spec())
        if config.path is not None:
            return Qwen3VL.from_pretrained(config.path, **options)
        return Qwen3VL.from_config(qwen3_vl_config(config.size), seed=config.seed, **options)


class Qwen3VLProcessor(Processor):
    """Qwen3-VL's tokenizer and chat prompt (one user turn: optional system, one video or image, question).

    Video prompts carry each temporal group's time as text, from the frames' real timestamps
    (`VisualItem.timestamps`). An empty `system_prompt` writes no system turn, as the template does
    without a system message.
    """

    def __init__(self, model_config):
        from spava.models.qwen2_5_vl.prompt import load_qwen_tokenizer

        self.tokenizer = load_qwen_tokenizer(model_config.tokenizer or model_config.path)
        self.token_ids = token_ids_from_config(model_config)

    def eos_token_ids(self) -> tuple[int, ...]:
        ids = (self.tokenizer.convert_tokens_to_ids("<|im_end|>"), *EOS_TOKEN_IDS, self.tokenizer.eos_token_id)
        return tuple(dict.fromkeys(int(i) for i in ids if i is not None))

    def build_inputs(self, prompt: str, *, document: str | None, items: list, system_prompt: str):
        from spava.models.qwen3_vl.inputs import build_prompt_inputs
        from spava.models.qwen3_vl.prompt import build_chat_prompt, build_document_prompt

        if len(items) > 1:
            raise ValueError(f"Qwen3-VL prompts take one video or one image per request, got {len(items)}")
        item = items[0] if items else None
        ids = self.token_ids
        if document is not None and item is None:
            chat = build_document_prompt(self.tokenizer, document, prompt, system_prompt)
        else:
            question = prompt if document is None else f"{document}\n\n{prompt}"
            is_video = item is not None and item.kind == "video"
            chat = build_chat_prompt(
                self.tokenizer, question, merge_size=ids.spatial_merge_size,
                temporal_patch_size=ids.temporal_patch_size, system_prompt=system_prompt,
                video_grid_thw=list(item.grid_thw) if is_video else None,
                video_timestamps=list(item.timestamps) if is_video else None,
                image_grid_thw=list(item.grid_thw) if item is not None and not is_video else None)
        grid = [list(item.grid_thw)] if item is not None else None
        return build_prompt_inputs(chat.input_ids, chat.num_query_tokens, ids,
                                   video_grid_thw=grid if item is not None and item.kind == "video" else None,
                                   image_grid_thw=grid if item is not None and item.kind == "image" else None)
