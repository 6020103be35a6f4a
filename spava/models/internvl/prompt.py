"""InternVL3's chat prompt for one user turn, as token ids, with the query split point.

Builds exactly what HF's `InternVLProcessor` makes of the converted checkpoints' chat template
(ChatML; the user turn is `<video>\\n` or `<IMG_CONTEXT>\\n` and then the question) for one video,
one image, a document, or nothing::

    [<|im_start|>system\\nSYSTEM<|im_end|>\\n]<|im_start|>user\\n
    Frame1: <img><IMG_CONTEXT> x 256</img>\\nFrame2: <img>...</img>\\n...FrameT: <img>...</img>
    \\nQUESTION<|im_end|>\\n<|im_start|>assistant\\n

(a video: one "FrameK: " line per frame, 256 context tokens each; an image: `<img>`, 256 context
tokens per tile, `</img>`). The system turn is left out when the system prompt is empty, as HF's
template does for messages without one. The query block (what approximate attention methods
attend exactly) is everything after the last `</img>`: the newline, the question, the assistant
prefix. Text between special tokens is tokenised piece by piece, which is what the tokenizer does
to the whole string (special tokens split it first). Pure functions of a tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spava.models.adapter import common_prefix_length

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"


@dataclass(frozen=True)
class InternVLSpecialTokens:
    """Ids of the image delimiters and the image context token, looked up from a tokenizer."""

    img_start: int
    img_end: int
    img_context: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "InternVLSpecialTokens":
        ids = {}
        for name, token in (("img_start", IMG_START), ("img_end", IMG_END), ("img_context", IMG_CONTEXT)):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no {token} token; load an InternVL3 tokenizer "
                                 "(the checkpoint's, or spava.models.internvl.tokenizer.build_internvl_tokenizer)")
            ids[name] = int(token_id)
        return cls(**ids)


@dataclass(frozen=True)
class InternVLPrompt:
    """A tokenised one-turn prompt: ids `[N]` and the length of the trailing query block."""

    input_ids: torch.Tensor
    num_query_tokens: int


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def chat_header(system_prompt: str) -> str:
    """Everything before the user's content: the optional system turn and the user turn's start."""
    system = f"{IM_START}system\n{system_prompt}{IM_END}\n" if system_prompt else ""
    return f"{system}{IM_START}user\n"


def assistant_suffix(question: str) -> str:
    return f"{question}{IM_END}\n{IM_START}assistant\n"


def build_visual_prompt(tokenizer, question: str, *, kind: str, num_tiles: int, tokens_per_tile: int = 256,
                        system_prompt: str = "") -> InternVLPrompt:
    """One video (`num_tiles` frames) or one image (`num_tiles` tiles) and a question."""
    if kind not in ("video", "image"):
        raise ValueError(f"kind must be 'video' or 'image', got {kind!r}")
    if num_tiles < 1:
        raise ValueError(f"a {kind} needs at least one tile, got {num_tiles}")
    special = InternVLSpecialTokens.from_tokenizer(tokenizer)
    header = chat_header(system_prompt)
    if kind == "image":
        ids = _encode(tokenizer, header + IMG_START) + [special.img_context] * (tokens_per_tile * num_tiles)
    else:
        ids = _encode(tokenizer, f"{header}Frame1: {IMG_START}") + [special.img_context] * tokens_per_tile
        for frame in range(2, num_tiles + 1):
            ids += [special.img_end] + _encode(tokenizer, f"\nFrame{frame}: ") + [special.img_start]
            ids += [special.img_context] * tokens_per_tile
    query = _encode(tokenizer, "\n" + assistant_suffix(question))
    ids += [special.img_end] + query
    return InternVLPrompt(torch.tensor(ids, dtype=torch.int64), len(query))


def build_text_prompt(tokenizer, question: str, *, document: str | None = None,
                      system_prompt: str = "") -> InternVLPrompt:
    """A question about a `document` (the context, then a blank line; the question is the query), or
    a question alone (the query starts at the first token not wholly inside the chat header: BPE can
    merge the header's last newline with a question that starts with whitespace)."""
    header = chat_header(system_prompt)
    if document is not None:
        context = _encode(tokenizer, f"{header}{document}\n\n")
        query = _encode(tokenizer, assistant_suffix(question))
        return InternVLPrompt(torch.tensor(context + query, dtype=torch.int64), len(query))
    ids = _encode(tokenizer, header + assistant_suffix(question))
    num_prefix = common_prefix_length(_encode(tokenizer, header), ids)
    return InternVLPrompt(torch.tensor(ids, dtype=torch.int64), len(ids) - num_prefix)
