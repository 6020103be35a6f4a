"""A tiny random-weight Qwen3-VL, its prompts and HF's answers, shared by the Qwen3-VL tests."""

from __future__ import annotations

import functools

import torch

from spava.models.qwen2_5_vl.prompt import load_qwen_tokenizer
from spava.models.qwen3_vl.inputs import build_prompt_inputs
from spava.models.qwen3_vl.model import Qwen3VL
from spava.models.qwen3_vl.presets import qwen3_vl_config
from spava.models.qwen3_vl.prompt import build_chat_prompt, build_document_prompt

PATCH_DIM = 3 * 2 * 16 * 16
QUESTION = "What happens in this clip, and when?"
DOCUMENT = ("The harbour log records three arrivals. The ferry docked at six, the trawler at nine after a storm "
            "delayed it, and a sailing yacht came in at noon with a torn jib. The harbour master noted the wind.")


def tiny_model(dtype=torch.float64, seed: int = 0) -> Qwen3VL:
    return Qwen3VL.from_config(qwen3_vl_config("tiny"), dtype=dtype, seed=seed)


@functools.lru_cache(maxsize=1)
def tokenizer():
    return load_qwen_tokenizer()


def make_prompt(model: Qwen3VL, kind: str = "video", grid=(3, 4, 6), seed: int = 0, question: str = QUESTION,
                dtype=torch.float64):
    """(HF kwargs, PromptInputs) of one prompt: 'video' (frames 0.5 s apart), 'image' or 'text' (a
    document); random pixel rows."""
    generator = torch.Generator().manual_seed(seed)
    ids = model.token_ids()
    if kind == "video":
        timestamps = [0.5 * i for i in range(2 * grid[0] - 1)]  # odd count: the last group is padded
        chat = build_chat_prompt(tokenizer(), question, video_grid_thw=grid, video_timestamps=timestamps)
    elif kind == "image":
        chat = build_chat_prompt(tokenizer(), question, image_grid_thw=grid)
    else:
        chat = build_document_prompt(tokenizer(), DOCUMENT, question, system_prompt="You are a helpful assistant.")
    pixels = None
    if kind != "text":
        pixels = torch.randn(grid[0] * grid[1] * grid[2], PATCH_DIM, generator=generator, dtype=dtype)
    grids = [list(grid)] if kind != "text" else None
    inputs = build_prompt_inputs(chat.input_ids, chat.num_query_tokens, ids,
                                 video_grid_thw=grids if kind == "video" else None,
                                 image_grid_thw=grids if kind == "image" else None,
                                 pixel_values_videos=pixels if kind == "video" else None,
                                 pixel_values=pixels if kind == "image" else None)
    return model.hf_inputs(chat.input_ids, pixels, grids, kind), inputs


@torch.inference_mode()
def hf_reference(model: Qwen3VL, hf_kwargs, num_new_tokens: int = 12):
    """(last-token logits `[vocab]` float32, greedy token ids) from HF transformers' forward/generate."""
    logits = model.hf(**hf_kwargs).logits[0, -1].float()
    generated = model.hf.generate(**hf_kwargs, max_new_tokens=num_new_tokens, min_new_tokens=num_new_tokens,
                                  do_sample=False)
    return logits, generated[0, hf_kwargs["input_ids"].shape[1]:].tolist()
