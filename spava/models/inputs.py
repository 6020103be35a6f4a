"""`PromptInputs`: one request's prompt as every model rank sees it, and how it is read from a layout.

The layout stage writes token ids, positions and visual-token positions to shared memory and names
the visual items (uint8 frames, streamed in); `read_prompt_inputs` maps them here. Pixel rows are
not shipped: each encoding rank preprocesses the frames of its own units on its device
(`spava.models.vision_inputs.SharedFrames`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from spava.comm.messages import LayoutTaskOutput
from spava.comm.transport import read_shared
from spava.models.vision_inputs import PixelRows, SharedFrames, VisualSource


@dataclass
class PromptInputs:
    """One request's prompt, identical on every rank (CPU tensors).

    Attributes:
        input_ids: `[N]` token ids of the full prompt (context + query).
        position_ids: `[3, N]` M-RoPE positions over the full prompt (or `[N]` for text-only models).
        rope_delta: decode position offset (next token position = N + step + rope_delta).
        num_query_tokens: length of the trailing query block.
        pixel_values: `[P, C*T*p*p]` pixel rows of every vision item (images first, then videos),
            when they were made already (benchmarks, tests); None when `visual` supplies them.
        grid_thw: (t, h, w) per vision item, same order.
        vision_positions: `[n_vis]` global position of each merged vision embedding, same order.
        visual: where encoding ranks get pixel rows (streamed frames); None = `pixel_values`.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    rope_delta: int = 0
    num_query_tokens: int = 0
    pixel_values: torch.Tensor | None = None
    grid_thw: list[tuple[int, int, int]] = field(default_factory=list)
    vision_positions: torch.Tensor | None = None
    visual: VisualSource | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def has_vision(self) -> bool:
        """Whether the prompt holds visual tokens (their rows come from `visual_source()`, or from
        the encoder ranks on a disaggregated prefill rank)."""
        return bool(self.grid_thw)

    def visual_source(self) -> VisualSource:
        """The source of pixel rows (`visual`, or `pixel_values` wrapped)."""
        if self.visual is None:
            if self.pixel_values is None:
                raise ValueError("this prompt has no visual inputs")
            self.visual = PixelRows(self.pixel_values)
        return self.visual


def read_prompt_inputs(layout: LayoutTaskOutput, vision_spec=None) -> PromptInputs:
    """`LayoutTaskOutput` (shared-memory refs) -> `PromptInputs`; tensors mapped zero-copy.

    `vision_spec` (the family's `VisionSpec`) is needed to read visual items; ranks that do not
    encode (disaggregated prefill ranks) pass None and get no visual source.
    """
    visual = SharedFrames(layout.items, vision_spec) if layout.items and vision_spec is not None else None
    return PromptInputs(
        input_ids=read_shared(layout.input_ids),
        position_ids=read_shared(layout.position_ids),
        rope_delta=layout.rope_delta,
        num_query_tokens=layout.num_query_tokens,
        grid_thw=[tuple(item.grid_thw) for item in layout.items],
        vision_positions=read_shared(layout.vision_positions),
        visual=visual,
    )
