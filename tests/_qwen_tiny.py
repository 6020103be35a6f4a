"""A tiny random-weight Qwen2.5-VL and hand-built prompts, shared by the model-path tests."""

from __future__ import annotations

import torch

from spava.models.qwen2_5_vl.inputs import build_prompt_inputs
from spava.models.qwen2_5_vl.model import Qwen25VL
from spava.models.qwen2_5_vl.presets import SPECIAL_TOKENS, qwen2_5_vl_config

PATCH_DIM = 3 * 2 * 14 * 14


def tiny_model(dtype=torch.float64) -> Qwen25VL:
    return Qwen25VL.from_config(qwen2_5_vl_config("tiny"), dtype=dtype, seed=0)


def _text(generator, n):
    return torch.randint(100, 150_000, (n,), generator=generator)


def make_prompt(kind: str = "video", grid=(4, 8, 10), num_query: int = 10, seed: int = 0, num_prefix: int = 14):
    """Token ids + pixels for 'video', 'image' or 'text' prompts; returns (hf kwargs, PromptInputs)."""
    generator = torch.Generator().manual_seed(seed)
    pieces = [_text(generator, num_prefix)]
    hf_kwargs: dict = {}
    if kind != "text":
        num_pads = grid[0] * grid[1] * grid[2] // 4
        pad = SPECIAL_TOKENS["video_token_id" if kind == "video" else "image_token_id"]
        pieces += [torch.tensor([SPECIAL_TOKENS["vision_start_token_id"]]), torch.full((num_pads,), pad),
                   torch.tensor([SPECIAL_TOKENS["vision_end_token_id"]])]
        pixels = torch.randn(grid[0] * grid[1] * grid[2], PATCH_DIM, generator=generator, dtype=torch.float64)
        grid_thw = torch.tensor([list(grid)])
        if kind == "video":
            hf_kwargs = dict(pixel_values_videos=pixels, video_grid_thw=grid_thw, second_per_grid_ts=torch.tensor([1.0]))
        else:
            hf_kwargs = dict(pixel_values=pixels, image_grid_thw=grid_thw)
    pieces.append(_text(generator, num_query))
    input_ids = torch.cat(pieces)
    mm_types = torch.zeros_like(input_ids)
    mm_types[input_ids == SPECIAL_TOKENS["image_token_id"]] = 1
    mm_types[input_ids == SPECIAL_TOKENS["video_token_id"]] = 2
    hf_kwargs.update(input_ids=input_ids[None], mm_token_type_ids=mm_types[None])
    return hf_kwargs, input_ids


def prompt_inputs(model: Qwen25VL, hf_kwargs, input_ids, num_query: int = 10):
    return build_prompt_inputs(
        input_ids, num_query, model.token_ids(),
        pixel_values=hf_kwargs.get("pixel_values"), image_grid_thw=hf_kwargs.get("image_grid_thw"),
        pixel_values_videos=hf_kwargs.get("pixel_values_videos"), video_grid_thw=hf_kwargs.get("video_grid_thw"),
        second_per_grid_ts=hf_kwargs.get("second_per_grid_ts"), is_transformers5_compat=True,
    )


@torch.inference_mode()
def hf_reference(model: Qwen25VL, hf_kwargs, num_new_tokens: int = 16):
    """(last-token logits `[vocab]`, greedy token ids) from HF transformers' own forward/generate."""
    logits = model.hf(**hf_kwargs).logits[0, -1].float()
    generated = model.hf.generate(**hf_kwargs, max_new_tokens=num_new_tokens, min_new_tokens=num_new_tokens,
                                  do_sample=False)
    return logits, generated[0, hf_kwargs["input_ids"].shape[1]:].tolist()
