"""A tiny random-weight InternVL3, saved as a local checkpoint, and hand-built prompts (model tests)."""

from __future__ import annotations

import json
import os

import torch

from spava.models.internvl.inputs import build_prompt_inputs
from spava.models.internvl.model import InternVL
from spava.models.internvl.pixels import tiles_to_rows
from spava.models.internvl.presets import IMAGE_TOKEN_ID, internvl_config
from spava.models.internvl.tokenizer import write_internvl_tokenizer_files
from spava.models.internvl.vision import IMAGENET_MEAN, IMAGENET_STD
from spava.models.qwen2_5_vl.prompt import _bundled_tokenizer_dir

IMG_START, IMG_END = IMAGE_TOKEN_ID - 2, IMAGE_TOKEN_ID - 1  # <img>, </img>
TILE, TOKENS_PER_TILE = 448, 256
MAX_POSITIONS = 640  # the tiny preset's max_position_embeddings: where dynamic NTK RoPE starts scaling


def tiny_model(dtype=torch.float64, seed: int = 0) -> InternVL:
    """The `tiny` preset with random weights; the ViT's class token and position embeddings (zeros
    after HF's init) are random too, so that tile and patch order matter to the output."""
    model = InternVL.from_config(internvl_config("tiny"), dtype=dtype, seed=seed)
    embeddings = model.hf.model.vision_tower.embeddings
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in (embeddings.cls_token, embeddings.position_embeddings):
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return model


def save_tiny_checkpoint(directory: str, dtype=torch.float64, seed: int = 0) -> str:
    """config.json + safetensors + InternVL3's tokenizer (from the bundled Qwen files) + preprocessor config."""
    model = tiny_model(dtype, seed)
    model.hf.save_pretrained(directory)
    write_internvl_tokenizer_files(_bundled_tokenizer_dir(), directory)
    processor = {"image_processor_type": "GotOcr2ImageProcessor", "size": {"height": TILE, "width": TILE},
                 "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "min_patches": 1,
                 "max_patches": 12, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
                 "do_normalize": True, "do_convert_rgb": True, "resample": 3}
    with open(os.path.join(directory, "preprocessor_config.json"), "w") as handle:
        json.dump(processor, handle, indent=1)
    return directory


def _text(generator, n: int) -> torch.Tensor:
    return torch.randint(100, 150_000, (n,), generator=generator)


def make_prompt(kind: str = "video", num_tiles: int = 2, num_prefix: int = 14, num_query: int = 10, seed: int = 0):
    """Token ids and pixels of a 'video' (one `<img>` block per frame), an 'image' (one block of all its
    tiles) or 'text' prompt. Returns (HF kwargs, PromptInputs)."""
    generator = torch.Generator().manual_seed(seed)
    pieces = [_text(generator, num_prefix)]
    kwargs: dict = {}
    grids = []
    if kind != "text":
        blocks = [num_tiles] if kind == "image" else [1] * num_tiles
        for index, tiles in enumerate(blocks):
            if index:
                pieces.append(_text(generator, 4))  # "\nFrame2: "
            pieces += [torch.tensor([IMG_START]), torch.full((tiles * TOKENS_PER_TILE,), IMAGE_TOKEN_ID),
                       torch.tensor([IMG_END])]
        images = torch.randn(num_tiles, 3, TILE, TILE, generator=generator, dtype=torch.float64)
        kwargs["pixel_values"] = images
        grids = [(num_tiles, TILE // 14, TILE // 14)]
    pieces.append(_text(generator, num_query))
    input_ids = torch.cat(pieces)
    kwargs["input_ids"] = input_ids[None]
    rows = tiles_to_rows(kwargs["pixel_values"].permute(0, 2, 3, 1), 14) if grids else None
    inputs = build_prompt_inputs(input_ids, num_query, IMAGE_TOKEN_ID, grids, TOKENS_PER_TILE, pixel_values=rows)
    return kwargs, inputs


def reset_hf_rope(model: InternVL) -> None:
    """Give HF's dynamic rotary module back its state of a freshly loaded model (HF keeps the scaled
    frequencies of earlier calls; spava's reference is one request on a fresh model)."""
    rotary = model.hf.model.language_model.rotary_emb
    rotary.inv_freq = rotary.original_inv_freq.clone()
    rotary.max_seq_len_cached = rotary.original_max_seq_len


@torch.inference_mode()
def hf_reference(model: InternVL, kwargs: dict, num_new_tokens: int = 16):
    """(last-token logits `[vocab]`, greedy token ids) from HF transformers' own forward / generate."""
    reset_hf_rope(model)
    logits = model.hf(**kwargs).logits[0, -1].float()
    reset_hf_rope(model)
    generated = model.hf.generate(**kwargs, max_new_tokens=num_new_tokens, min_new_tokens=num_new_tokens,
                                  do_sample=False)
    reset_hf_rope(model)
    return logits, generated[0, kwargs["input_ids"].shape[1]:].tolist()
