"""Qwen3-VL chat prompt for one user turn, as token ids, with the context/query split point.

Role
----
Builds what Qwen3-VL's chat template plus its processor produce for one question about one video
(or one image, or a document, or nothing). A video is written one temporal group at a time, each
preceded by its time as text::

    [<|im_start|>system\\nSYSTEM<|im_end|>\\n]                 (only when a system prompt is given)
    <|im_start|>user\\n
    <0.5 seconds><|vision_start|><|video_pad|> x P<|vision_end|>
    <1.5 seconds><|vision_start|><|video_pad|> x P<|vision_end|> ...
    QUESTION<|im_end|>\\n<|im_start|>assistant\\n

``P = h*w / merge_size**2`` pads per temporal group of a ``(t, h, w)`` grid. The time of a group is
the mean of its first and last frame's presentation time (the last group, padded with its last
frame, uses that frame twice), written with one decimal: the rule of Qwen3-VL's processor, here on
the frames' real timestamps. This is the layout of the reference processor (and vLLM): the
template's ``<|vision_start|><|video_pad|><|vision_end|>`` is replaced as a whole by the groups.
(transformers 5.17's generic placeholder expansion replaces only the pad token and so wraps the
groups in one more ``<|vision_start|>`` ... ``<|vision_end|>``; spava follows the reference.)
An image is ``<|vision_start|><|image_pad|> x (t*h*w/merge**2)<|vision_end|>``.

Inputs / outputs
----------------
``build_chat_prompt(tokenizer, question, video_grid_thw=..., video_timestamps=...)`` ->
:class:`Qwen3Prompt`: ``input_ids`` ``[N]`` int64 and ``num_query_tokens``, the tokens after the
last ``<|vision_end|>`` (question + assistant prefix), which the attention methods treat as the
exactly attended query. The text is tokenised once with ONE pad per block and the pads are then
repeated: special tokens never merge with their neighbours, so this equals tokenising the text with
every pad written out, without building a string of a hundred thousand pad tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spava.models.adapter import common_prefix_length
from spava.models.qwen2_5_vl.prompt import (IM_END, IM_START, IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START,
                                            QwenSpecialTokens)


@dataclass(frozen=True)
class Qwen3Prompt:
    """A tokenised one-turn prompt: ids `[N]` and the length of the trailing query block."""

    input_ids: torch.Tensor
    num_query_tokens: int

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


def frame_group_timestamps(timestamps: Sequence[float], temporal_patch_size: int) -> list[float]:
    """Seconds of each temporal group of frames (see the module docstring).

    Args:
        timestamps: presentation time of every frame, seconds, length T.
        temporal_patch_size: frames per temporal group (2).
    Returns:
        ``ceil(T / temporal_patch_size)`` values: the mean of each group's first and last frame's time.
    """
    times = [float(t) for t in timestamps]
    if not times:
        raise ValueError("a video needs at least one frame timestamp")
    times += [times[-1]] * (-len(times) % temporal_patch_size)
    return [(times[i] + times[i + temporal_patch_size - 1]) / 2 for i in range(0, len(times), temporal_patch_size)]


def _header(system_prompt: str) -> str:
    system = f"{IM_START}system\n{system_prompt}{IM_END}\n" if system_prompt else ""
    return f"{system}{IM_START}user\n"


def _suffix(question: str) -> str:
    return f"{question}{IM_END}\n{IM_START}assistant\n"


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _grid(grid_thw) -> tuple[int, int, int]:
    values = [int(v) for v in torch.as_tensor(grid_thw).reshape(-1).tolist()]
    if len(values) != 3:
        raise ValueError(f"expected one grid (t, h, w), got {values}")
    return values[0], values[1], values[2]


def _expand(ids: list[int], pad_id: int, counts: list[int]) -> list[int]:
    """Repeat the k-th `pad_id` of `ids` counts[k] times."""
    num_pads = ids.count(pad_id)
    if num_pads != len(counts):
        raise ValueError(f"the prompt text holds {num_pads} pad tokens for {len(counts)} vision blocks; "
                         "a question must not contain <|video_pad|> or <|image_pad|>")
    out, pending = [], iter(counts)
    for token in ids:
        out += [pad_id] * next(pending) if token == pad_id else [token]
    return out


def build_chat_prompt(tokenizer, question: str, *, video_grid_thw=None, video_timestamps=None,
                      image_grid_thw=None, merge_size: int = 2, temporal_patch_size: int = 2,
                      system_prompt: str = "") -> Qwen3Prompt:
    """Token ids of one user turn (optional system, [video | image], question) + the assistant prefix.

    Args:
        tokenizer: a Qwen tokenizer (`spava.models.qwen2_5_vl.prompt.load_qwen_tokenizer`).
        question: the user's text, placed after the vision item.
        video_grid_thw: ``(t, h, w)`` patch grid of the one video, or None.
        video_timestamps: presentation time of each of the video's frames, seconds (needed with a video).
        image_grid_thw: ``(t, h, w)`` patch grid of the one image, or None (not with a video).
        merge_size, temporal_patch_size: the vision tower's (2, 2).
        system_prompt: system turn text; empty writes no system turn (the template's default).
    """
    if video_grid_thw is not None and image_grid_thw is not None:
        raise ValueError("pass either video_grid_thw or image_grid_thw, not both (one vision item per prompt)")
    header, suffix = _header(system_prompt), _suffix(question)
    if video_grid_thw is None and image_grid_thw is None:
        ids = _encode(tokenizer, header + suffix)
        num_context = common_prefix_length(_encode(tokenizer, header), ids)
        return Qwen3Prompt(torch.tensor(ids, dtype=torch.int64), len(ids) - num_context)
    special = QwenSpecialTokens.from_tokenizer(tokenizer)
    if video_grid_thw is not None:
        grid_t, grid_h, grid_w = _grid(video_grid_thw)
        if video_timestamps is None:
            raise ValueError("a Qwen3-VL video prompt needs the frames' timestamps (video_timestamps)")
        seconds = frame_group_timestamps(video_timestamps, temporal_patch_size)
        if len(seconds) != grid_t:
            raise ValueError(f"{len(video_timestamps)} frame timestamps make {len(seconds)} temporal groups but the "
                             f"grid has t={grid_t}; pass the timestamps of the frames the grid was made from")
        visual = "".join(f"<{s:.1f} seconds>{VISION_START}{VIDEO_PAD}{VISION_END}" for s in seconds)
        pad_id, counts = special.video_pad, [grid_h * grid_w // merge_size ** 2] * grid_t
    else:
        grid_t, grid_h, grid_w = _grid(image_grid_thw)
        visual = f"{VISION_START}{IMAGE_PAD}{VISION_END}"
        pad_id, counts = special.image_pad, [grid_t * grid_h * grid_w // merge_size ** 2]
    if grid_h % merge_size or grid_w % merge_size:
        raise ValueError(f"grid {(grid_t, grid_h, grid_w)} has h or w not divisible by merge_size={merge_size}")
    ids = _expand(_encode(tokenizer, header + visual + suffix), pad_id, counts)
    last_end = len(ids) - 1 - ids[::-1].index(special.vision_end)
    return Qwen3Prompt(torch.tensor(ids, dtype=torch.int64), len(ids) - last_end - 1)


def build_document_prompt(tokenizer, document: str, question: str, system_prompt: str = "") -> Qwen3Prompt:
    """One user turn asking `question` about a text `document` (the context the prefill splits).

    ids = encode(header + document + blank line) + encode(question + assistant prefix), so the split
    point is exact.
    """
    context = _encode(tokenizer, f"{_header(system_prompt)}{document}\n\n")
    query = _encode(tokenizer, _suffix(question))
    return Qwen3Prompt(torch.tensor(context + query, dtype=torch.int64), len(query))
