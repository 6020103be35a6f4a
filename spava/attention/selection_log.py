"""Optional record of the passing selections one rank makes (tests and fidelity diagnostics).

Off by default: `AttnContext.selections` is None and the approximate methods only test for None,
so a normal prefill pays nothing. With a `SelectionLog` attached (`dataclasses.replace(ctx,
selections=SelectionLog())`), every top-k selection of a chunk appends a `PassingSelection`: the
layer, the global token range the tokens were chosen from, the chosen global token indices per KV
head and (optionally) the pooled scores of that range. Runs wherever the method runs; entries are
CPU tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from spava.plan.sequence import SequencePlan


@dataclass(frozen=True)
class PassingSelection:
    """One chunk's selection in one layer.

    Attributes:
        layer_idx: decoder layer.
        start, stop: global half-open range of the tokens the selection was made from.
        indices: `[n, Hkv]` int64 global token indices, per KV head, in the order top-k returned them.
        scores: `[stop - start, Hkv]` float32 pooled scores of that range, or None when not kept.
    """

    layer_idx: int
    start: int
    stop: int
    indices: torch.Tensor
    scores: torch.Tensor | None


@dataclass
class SelectionLog:
    """Every `PassingSelection` of one rank, in the order they were made."""

    keep_scores: bool = True
    entries: list[PassingSelection] = field(default_factory=list)

    def add(self, plan: "SequencePlan", layer_idx: int, local_start: int, local_stop: int,
            pooled: torch.Tensor, index: torch.Tensor) -> None:
        """Record the selection `index` `[n, Hkv]` (rows of local range [local_start, local_stop),
        all inside one segment) made from `pooled` `[local_stop - local_start, Hkv]` scores."""
        ids = plan.local_token_ids()[local_start:local_stop]
        if local_stop > local_start and int(ids[-1]) - int(ids[0]) != local_stop - local_start - 1:
            raise ValueError(f"local range [{local_start}, {local_stop}) spans more than one segment")
        start = int(ids[0]) if len(ids) else 0
        scores = pooled.detach().float().cpu().clone() if self.keep_scores else None
        self.entries.append(PassingSelection(layer_idx, start, start + len(ids), ids[index.cpu()], scores))
