"""What the benchmarks (`spava bench`, `spava bench-e2e`) need of InternVL3: synthetic requests, HF's
own forward and generate on the same inputs, and the vision tower's FLOPs.

A benchmark video of F frames is F tiles of 448x448 whatever its resolution (256 tokens each);
token ids are random text around the frame blocks (speed does not depend on their values) and the
pixel rows are random, made on the device.
"""

from __future__ import annotations

import torch

from spava.models.inputs import PromptInputs
from spava.models.internvl.inputs import build_prompt_inputs
from spava.models.internvl.pixels import rows_to_images

NUM_SYSTEM_TOKENS, NUM_QUERY_TOKENS, NUM_FRAME_LABEL_TOKENS = 14, 11, 4  # "\nFrame12: "
IMG_START_OFFSET, IMG_END_OFFSET = -2, -1  # <img>, </img> sit just before <IMG_CONTEXT> in the vocabulary


def build_random(size: str, dtype: torch.dtype, device: str):
    """An `InternVL` adapter with random weights of a preset size."""
    from spava.models.internvl.model import InternVL
    from spava.models.internvl.presets import internvl_config

    return InternVL.from_config(internvl_config(size), dtype=dtype, device=device)


def num_case_tiles(case) -> int:
    """Tiles of a benchmark case: its frames (a `VideoCase`), or the first entry of its grid (a `GridCase`)."""
    grid = getattr(case, "grid", None)
    return int(grid[0]) if grid is not None else int(case.num_frames)


def make_inputs(case, adapter, *, seed: int = 0, device="cpu", pixel_dtype=torch.float32) -> PromptInputs:
    """PromptInputs of one synthetic request (one 448x448 tile per frame); pixel rows made on `device`."""
    ids = adapter.token_ids()
    context, per_tile = ids.image_token_id, ids.tokens_per_tile
    num_tiles = num_case_tiles(case)
    generator = torch.Generator().manual_seed(seed)
    pieces = [torch.randint(100, 150_000, (NUM_SYSTEM_TOKENS,), generator=generator)]
    for tile in range(num_tiles):
        if tile:
            pieces.append(torch.randint(100, 150_000, (NUM_FRAME_LABEL_TOKENS,), generator=generator))
        pieces += [torch.tensor([context + IMG_START_OFFSET]), torch.full((per_tile,), context),
                   torch.tensor([context + IMG_END_OFFSET])]
    pieces.append(torch.randint(100, 150_000, (NUM_QUERY_TOKENS,), generator=generator))
    spec = adapter.vision_spec
    device_generator = torch.Generator(device=device).manual_seed(seed)
    rows = torch.randn(num_tiles * spec.grid_side ** 2, spec.patch_dim, generator=device_generator, device=device,
                       dtype=pixel_dtype)
    return build_prompt_inputs(torch.cat(pieces), NUM_QUERY_TOKENS, context,
                               [(num_tiles, spec.grid_side, spec.grid_side)], per_tile, pixel_values=rows)


def hf_images(adapter, inputs: PromptInputs) -> torch.Tensor:
    """The pixel rows of `inputs` as the images `[T, 3, 448, 448]` HF's model takes."""
    spec = adapter.vision_spec
    num_tiles = sum(grid[0] for grid in inputs.grid_thw)
    return rows_to_images(inputs.pixel_values, num_tiles, spec.grid_side, spec.patch_size)


@torch.inference_mode()
def hf_first_token(adapter, inputs: PromptInputs) -> int:
    """HF transformers' own forward over the prompt (vision tower included) -> the greedy first token."""
    ids = inputs.input_ids.to(adapter.device)[None]
    logits = adapter.hf(input_ids=ids, pixel_values=hf_images(adapter, inputs), logits_to_keep=1,
                        use_cache=True).logits
    return int(torch.argmax(logits[0, -1]))


def hf_generate_kwargs(adapter, processor, frames: torch.Tensor, prompt: str, system_prompt: str):
    """What users do today with HF on one file's decoded frames `[T, H, W, 3]` (uint8, CPU): preprocess
    on the CPU as HF's video processor does, lay out the prompt -> (input_ids `[1, N]`, generate kwargs),
    CPU tensors."""
    from spava.comm.messages import TensorRef, VisualItem

    spec = adapter.vision_spec
    num_frames = int(frames.shape[0])
    plan = spec.plan(num_frames, int(frames.shape[1]), int(frames.shape[2]))
    rows = spec.preprocess(frames, plan.resized_hw, "video")
    item = VisualItem("video", TensorRef("", list(frames.shape), "uint8"), None, list(plan.grid_thw),
                      list(plan.resized_hw), [0.0] * num_frames, 0.0)
    inputs = processor.build_inputs(prompt, document=None, items=[item], system_prompt=system_prompt)
    images = rows_to_images(rows, num_frames, spec.grid_side, spec.patch_size)
    ids = inputs.input_ids[None]
    return ids, dict(pixel_values=images, attention_mask=torch.ones_like(ids))


def vision_flops(vision_config, text_config, num_tiles: int, downsample_ratio: float = 0.5) -> int:
    """FLOPs of InternViT + pixel shuffle + projector over `num_tiles` tiles.

    Per tile: the patch embedding once per patch, every layer's linear maps and full attention over
    the patches and the class token, then the projector MLP on the merged tokens.
    """
    image_size = vision_config.image_size[0] if isinstance(vision_config.image_size, (list, tuple)) \
        else vision_config.image_size
    patch = vision_config.patch_size[0] if isinstance(vision_config.patch_size, (list, tuple)) \
        else vision_config.patch_size
    num_patches = (image_size // patch) ** 2
    num_tokens = num_patches + 1  # the class token
    hidden, inter = vision_config.hidden_size, vision_config.intermediate_size
    per_layer = 2 * num_tokens * (4 * hidden * hidden + 2 * hidden * inter) + 4 * hidden * num_tokens ** 2
    embedding = 2 * num_patches * 3 * patch * patch * hidden
    merged = round(num_patches * downsample_ratio ** 2)
    merged_width = round(hidden / downsample_ratio ** 2)
    text_hidden = text_config.hidden_size
    projector = 2 * merged * (merged_width * text_hidden + text_hidden * text_hidden)
    return num_tiles * (embedding + per_layer * vision_config.num_hidden_layers + projector)
