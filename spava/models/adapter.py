"""Base of the model adapters: what every adapter around an HF model (`self.hf`) exposes."""

from __future__ import annotations

import torch


class HFAdapter:
    """Device and dtype of the wrapped HF model (`self.hf`, set by the subclass)."""

    hf: torch.nn.Module

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def place_visual(self, hidden: torch.Tensor, local_rows: torch.Tensor, features: torch.Tensor) -> None:
        """Write the vision tower's features `[n, d]` into the local hidden states `[S, d]` at rows
        `local_rows` `[n]` (a family whose tower returns more than the embeddings overrides this)."""
        hidden.index_copy_(0, local_rows, features)


def common_prefix_length(first: list[int], second: list[int]) -> int:
    """Number of leading token ids the two sequences share (where a context ends inside a prompt)."""
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length
