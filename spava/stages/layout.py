"""`layout` stage: chat prompt, token ids, full-prompt positions and where every visual token goes.

Input `LayoutTaskReq` (the question, an optional document, and the request's visual items: their
grids, not their pixels); output `LayoutTaskOutput` with token ids `[N]`, positions (`[3, N]` M-RoPE
or `[N]`) and the visual-token positions `[n_vis]` in shared memory, plus the visual items passed on
to the model ranks, which preprocess the frames themselves. Everything model-specific comes from the
model family's `Processor`. Over-budget prompts are rejected here, before any GPU work. The split
plan itself is a pure function of these sizes (`spava.plan.sequence`), recomputed by every model rank.
"""

from __future__ import annotations

import time

from spava.comm.messages import LayoutTaskOutput, LayoutTaskReq
from spava.comm.transport import write_shared
from spava.models.family import get_family
from spava.stages.base import BadInputError, Stage, StageContext


class LayoutPlanner(Stage):
    name = "layout"

    def __init__(self, context: StageContext, model_config, system_prompt: str, max_prompt_tokens: int):
        self.context = context
        self.model_config = model_config
        self.system_prompt = system_prompt
        self.max_prompt_tokens = max_prompt_tokens
        self.processor = None

    @classmethod
    def from_config(cls, config, context: StageContext) -> "LayoutPlanner":
        return cls(context, config.model, config.layout.system_prompt, config.layout.max_prompt_tokens)

    def setup(self) -> None:
        self.processor = get_family(self.model_config).processor()

    def process(self, task: LayoutTaskReq) -> LayoutTaskOutput:
        start = time.perf_counter()
        if not task.prompt.strip():
            raise BadInputError("the prompt is empty; ask a question about the video")
        try:
            inputs = self.processor.build_inputs(task.prompt, document=task.document, items=task.items,
                                                 system_prompt=self.system_prompt)
        except ValueError as error:
            raise BadInputError(str(error)) from None
        if inputs.num_tokens > self.max_prompt_tokens:
            raise BadInputError(
                f"the prompt has {inputs.num_tokens} tokens, over layout.max_prompt_tokens={self.max_prompt_tokens}; "
                "shorten the question or the document, or lower video.max_frames / video.max_pixels"
            )
        shm, request_id = self.context.shm_dir, task.request_id
        return LayoutTaskOutput(
            request_id=request_id,
            input_ids=write_shared(inputs.input_ids, shm, request_id, "ids"),
            position_ids=write_shared(inputs.position_ids, shm, request_id, "positions"),
            vision_positions=write_shared(inputs.vision_positions, shm, request_id, "vision_positions"),
            items=list(task.items),
            num_query_tokens=inputs.num_query_tokens,
            rope_delta=inputs.rope_delta,
            num_visual_tokens=int(inputs.vision_positions.numel()),
            seconds=time.perf_counter() - start,
        )
