"""InternVL3 preprocessing and prompts against HF transformers (no torchvision, CPU).

Images: spava's tiles (video worker, Pillow) + normalisation (model rank) equal HF's
`GotOcr2ImageProcessorPil` bit for bit, and the prompt ids equal HF's `InternVLProcessor`'s. Video
frames: HF's `InternVLVideoProcessor` needs torchvision, so the reference is written here from what
it does (torchvision's bicubic antialiased resize of uint8 tensors, which on the CPU is torch's
uint8 kernel, then the fused `(x - 255*mean) / (255*std)`); the frame prompt comes from HF's own
`replace_video_token`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spava.comm.messages import TensorRef, VisualItem
from spava.config import ModelConfig
from spava.models.family import family_name, get_family
from spava.models.internvl.family import InternVLProcessor as SpavaProcessor
from spava.models.internvl.pixels import rows_to_images, tiles_to_rows
from spava.models.internvl.prompt import build_visual_prompt
from spava.models.internvl.tokenizer import build_internvl_tokenizer
from spava.models.internvl.vision import IMAGENET_MEAN, IMAGENET_STD, make_vision_spec, tile_grid

QUESTION = "What happens here?"
SYSTEM = "You are a helpful assistant."
IMAGE_SIZES = [(448, 448), (300, 700), (1000, 500), (37, 1200), (900, 1100), (64, 80), (2000, 2000)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_internvl_tokenizer()


@pytest.fixture(scope="module")
def spec():
    return make_vision_spec({"image_size": [448, 448], "patch_size": [14, 14]}, 0.5)


def _image(height, width, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8)


def _hf_image_processor(**overrides):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, image_mean=list(IMAGENET_MEAN),
                                    image_std=list(IMAGENET_STD), **overrides)


def _hf_processor(tokenizer, monkeypatch):
    """HF's InternVLProcessor with the Pillow image processor. Its video processor needs torchvision,
    so a bare one stands in (never called) and the class check that insists on it is skipped."""
    from transformers.models.internvl.processing_internvl import InternVLProcessor
    from transformers.video_processing_utils import BaseVideoProcessor

    monkeypatch.setattr(InternVLProcessor, "check_argument_for_proper_class", lambda self, name, arg: type(arg))
    return InternVLProcessor(image_processor=_hf_image_processor(), tokenizer=tokenizer,
                             video_processor=BaseVideoProcessor(), image_seq_length=256)


def _spava_pixels(spec, image):
    """What the pipeline does with an image: tiles in the video worker, rows on the rank, images in encode."""
    visual = spec.plan_image(*image.shape[:2])
    frames = spec.image_frames(image, visual)
    rows = spec.preprocess(torch.from_numpy(frames), visual.resized_hw, "image")
    return visual, rows_to_images(rows, visual.grid_thw[0], spec.grid_side, spec.patch_size)


def test_tile_grid_matches_hf():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    generator = np.random.RandomState(1)
    sizes = IMAGE_SIZES + [tuple(int(x) for x in generator.randint(1, 4000, 2)) for _ in range(300)]
    for height, width in sizes:
        for max_tiles in (6, 12):
            assert tile_grid(height, width, 448, 1, max_tiles) == get_optimal_tiled_canvas(
                (height, width), (448, 448), 1, max_tiles), (height, width, max_tiles)


@pytest.mark.parametrize("height,width", IMAGE_SIZES)
def test_image_tiles_match_hf_image_processor(spec, height, width):
    image = _image(height, width)
    visual, ours = _spava_pixels(spec, image)
    hf = _hf_image_processor()(images=[image], crop_to_patches=True, return_tensors="pt")
    assert visual.grid_thw == (int(hf["num_patches"][0]), 32, 32)
    assert visual.num_tokens == 256 * visual.grid_thw[0]
    assert torch.equal(ours, hf["pixel_values"])


def test_untiled_image_matches_hf_without_crop_to_patches():
    spec = make_vision_spec({}, 0.5, {"max_patches": 1})
    image = _image(300, 700, seed=2)
    visual, ours = _spava_pixels(spec, image)
    hf = _hf_image_processor()(images=[image], crop_to_patches=False, return_tensors="pt")
    assert visual.grid_thw == (1, 32, 32)
    assert torch.equal(ours, hf["pixel_values"])


def _reference_video_pixels(frames: torch.Tensor) -> torch.Tensor:
    """HF's InternVLVideoProcessor on uint8 frames `[T, H, W, 3]` -> `[T, 3, 448, 448]` float32."""
    resized = F.interpolate(frames.permute(0, 3, 1, 2), size=(448, 448), mode="bicubic", antialias=True,
                            align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN) * 255.0
    std = torch.tensor(IMAGENET_STD) * 255.0
    return (resized.float() - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


@pytest.mark.parametrize("height,width", [(360, 640), (448, 448), (720, 500), (100, 90)])
def test_video_frames_match_hf_video_processor_arithmetic(spec, height, width):
    frames = torch.from_numpy(np.stack([_image(height, width, seed) for seed in range(3)]))
    visual = spec.plan(3, height, width)
    assert visual.grid_thw == (3, 32, 32) and visual.resized_hw == (448, 448) and visual.num_tokens == 768
    rows = spec.preprocess(frames, visual.resized_hw, "video")
    assert rows.shape == (3 * 1024, 588) and rows.dtype == torch.float32
    assert torch.equal(rows_to_images(rows, 3, 32, 14), _reference_video_pixels(frames))


def test_rows_are_raster_order_patches_and_fold_back_exactly():
    tiles = torch.arange(2 * 448 * 448 * 3, dtype=torch.int64).reshape(2, 448, 448, 3)
    rows = tiles_to_rows(tiles, 14)
    # row 33 of tile 1 is the patch at patch-row 1, patch-column 1; its columns are (channel, y, x)
    assert torch.equal(rows[1024 + 33].reshape(3, 14, 14), tiles[1, 14:28, 14:28].permute(2, 0, 1))
    assert torch.equal(rows_to_images(rows, 2, 32, 14), tiles.permute(0, 3, 1, 2))


@pytest.mark.parametrize("system_prompt", [SYSTEM, ""])
@pytest.mark.parametrize("height,width", [(300, 700), (448, 448)])
def test_image_prompt_matches_hf_processor(tokenizer, spec, monkeypatch, system_prompt, height, width):
    image = _image(height, width, seed=3)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    hf = _hf_processor(tokenizer, monkeypatch)(images=[image], text=[text], return_tensors="pt")
    visual, pixels = _spava_pixels(spec, image)
    prompt = build_visual_prompt(tokenizer, QUESTION, kind="image", num_tiles=visual.grid_thw[0],
                                 system_prompt=system_prompt)
    assert prompt.input_ids.tolist() == hf["input_ids"][0].tolist()
    assert torch.equal(pixels, hf["pixel_values"])
    assert tokenizer.decode(prompt.input_ids[-prompt.num_query_tokens:]) == (
        f"\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("system_prompt", [SYSTEM, ""])
@pytest.mark.parametrize("num_frames", [1, 3, 12])
def test_video_prompt_matches_hf_processor(tokenizer, monkeypatch, system_prompt, num_frames):
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    processor = _hf_processor(tokenizer, monkeypatch)
    frames = processor.replace_video_token({"pixel_values_videos": [torch.zeros(num_frames, 3, 448, 448)]}, 0)
    assert text.count("<video>") == 1
    expected = tokenizer(text.replace("<video>", frames), add_special_tokens=False)["input_ids"]
    prompt = build_visual_prompt(tokenizer, QUESTION, kind="video", num_tiles=num_frames, system_prompt=system_prompt)
    assert prompt.input_ids.tolist() == expected
    assert prompt.num_query_tokens == len(tokenizer(f"\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
                                                     add_special_tokens=False)["input_ids"])


def test_processor_lays_out_visual_tokens_and_query(tmp_path):
    processor = get_family(ModelConfig(family="internvl", size="tiny")).processor()
    item = VisualItem("video", TensorRef("", [4, 90, 160, 3], "uint8"), None, [4, 32, 32], [448, 448],
                      [0.0, 0.5, 1.0, 1.5], 0.5)
    inputs = processor.build_inputs(QUESTION, document=None, items=[item], system_prompt=SYSTEM)
    ids = inputs.input_ids
    assert inputs.grid_thw == [(4, 32, 32)] and inputs.vision_positions.numel() == 4 * 256
    assert torch.equal(ids[inputs.vision_positions], torch.full((1024,), 151667))
    assert torch.equal(inputs.position_ids, torch.arange(ids.numel())) and inputs.rope_delta == 0
    assert int(inputs.vision_positions[-1]) == ids.numel() - inputs.num_query_tokens - 2  # then </img>, query
    assert processor.eos_token_ids() == (151645,)
    text = processor.build_inputs(QUESTION, document="A long report.", items=[], system_prompt=SYSTEM)
    assert text.grid_thw == [] and text.vision_positions.numel() == 0
    assert processor.decode(text.input_ids[-text.num_query_tokens:].tolist()) == (
        f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="one video or one image"):
        processor.build_inputs(QUESTION, document=None, items=[item, item], system_prompt=SYSTEM)


def test_text_prompt_equals_the_chat_template(tokenizer):
    processor = get_family(ModelConfig(family="internvl", size="tiny")).processor()
    inputs = processor.build_inputs(QUESTION, document=None, items=[], system_prompt=SYSTEM)
    text = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
                                         tokenize=False, add_generation_prompt=True)
    assert inputs.input_ids.tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_ids_are_the_checkpoints(tokenizer):
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<img>", "</img>", "<IMG_CONTEXT>", "</box>")}
    assert ids == {"<img>": 151665, "</img>": 151666, "<IMG_CONTEXT>": 151667, "</box>": 151673}
    assert tokenizer.context_image_token_id == 151667 and tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645


def test_family_is_found_from_the_checkpoint_and_checks_token_ids(tmp_path):
    import json

    from spava.models.internvl.presets import config_dict

    config = config_dict("tiny")
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert family_name(ModelConfig(path=str(tmp_path))) == "internvl"
    config["image_token_id"] = 151660
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="image_token_id"):
        SpavaProcessor(ModelConfig(path=str(tmp_path)), make_vision_spec({}, 0.5))
    with pytest.raises(ValueError, match="internvl preset"):
        ModelConfig(family="internvl", size="7b")
