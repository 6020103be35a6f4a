"""`layout` stage: chat prompt, smart-resize + patchify, full-prompt M-RoPE positions, budgets.

Input `LayoutTaskReq` (the prompt and the sampled frames); output `LayoutTaskOutput` with token ids,
`[3, N]` positions, vision token positions and `[P, 1176]` pixel rows in shared memory. The split
plan itself is a pure function of these sizes (`spava.plan.sequence`), recomputed by every model rank
rather than shipped. Over-budget prompts are rejected here, before any GPU work.
"""

from __future__ import annotations

import time


import torch

from spava.comm.messages import LayoutTaskOutput, LayoutTaskReq
from spava.comm.transport import read_shared, write_shared
from spava.stages.base import BadInputError, Stage, StageContext


class LayoutPlanner(Stage):
    name = "layout"

    def __init__(self, context: StageContext, tokenizer_path: str | None, model_path: str | None, model_size: str,
                 system_prompt: str, max_prompt_tokens: int, family: str = "qwen2_5_vl"):
        self.context = context
        self.family = family
        self.tokenizer_path = tokenizer_path
        self.model_path = model_path
        self.model_size = model_size
        self.system_prompt = system_prompt
        self.max_prompt_tokens = max_prompt_tokens
        self.tokenizer = None
        self.token_ids = None

    @classmethod
    def from_config(cls, config, context: StageContext) -> "LayoutPlanner":
        model = config.model
        return cls(context, model.tokenizer or model.path, model.path, model.size, config.layout.system_prompt,
                   config.layout.max_prompt_tokens, model.family)

    def setup(self) -> None:
        if self.family == "text":
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path, local_files_only=True)
            return
        from spava.models.qwen2_5_vl.model import load_hf_config, vision_token_ids
        from spava.models.qwen2_5_vl.prompt import load_qwen_tokenizer

        self.tokenizer = load_qwen_tokenizer(self.tokenizer_path)
        self.token_ids = vision_token_ids(load_hf_config(self.model_path, self.model_size))

    def _pixels(self, task: LayoutTaskReq):
        from spava.models.qwen2_5_vl.processing import QwenProcessorConfig, preprocess_video

        if task.frames is None:
            return None, None
        config = QwenProcessorConfig(min_pixels=task.options["min_pixels"], max_pixels=task.options["max_pixels"])
        pixel_values, grid_thw = preprocess_video(read_shared(task.frames), config)
        return pixel_values, [int(x) for x in grid_thw.reshape(-1).tolist()]

    def process(self, task: LayoutTaskReq) -> LayoutTaskOutput:
        from spava.models.qwen2_5_vl.inputs import build_prompt_inputs
        from spava.models.qwen2_5_vl.prompt import build_chat_prompt, build_document_prompt

        start = time.perf_counter()
        if not task.prompt.strip():
            raise BadInputError("the prompt is empty; ask a question about the video")
        if self.family == "text":
            return self._process_text(task, start)
        pixel_values, grid = self._pixels(task)
        if task.document is not None and grid is None:
            prompt = build_document_prompt(self.tokenizer, task.document, task.prompt, self.system_prompt)
        else:
            question = task.prompt if task.document is None else f"{task.document}\n\n{task.prompt}"
            prompt = build_chat_prompt(self.tokenizer, question, video_grid_thw=grid,
                                       merge_size=self.token_ids.spatial_merge_size, system_prompt=self.system_prompt)
        if prompt.num_tokens > self.max_prompt_tokens:
            raise BadInputError(
                f"the prompt has {prompt.num_tokens} tokens, over layout.max_prompt_tokens={self.max_prompt_tokens}; "
                "shorten the question or lower video.max_frames / video.max_pixels"
            )
        inputs = build_prompt_inputs(
            prompt.input_ids, prompt.num_query_tokens, self.token_ids,
            pixel_values_videos=pixel_values, video_grid_thw=[grid] if grid else None,
            second_per_grid_ts=[task.second_per_grid] if grid else None,
        )
        return self._write(task.request_id, inputs, grid, time.perf_counter() - start)

    def _process_text(self, task: LayoutTaskReq, start: float) -> LayoutTaskOutput:
        """Text-family models: the document is the context the prefill splits, the question the query."""
        from spava.models.text_lm import build_text_inputs

        if task.frames is not None:
            raise BadInputError("model.family=text answers questions about documents, not videos; pass document=")
        if not task.document:
            raise BadInputError("a text model needs a document to ask about (document=... / --document FILE)")
        try:
            inputs, _ = build_text_inputs(self.tokenizer, task.document, task.prompt)
        except ValueError as error:
            raise BadInputError(str(error)) from None
        if inputs.num_tokens > self.max_prompt_tokens:
            raise BadInputError(f"the prompt has {inputs.num_tokens} tokens, over layout.max_prompt_tokens="
                                f"{self.max_prompt_tokens}; shorten the document")
        inputs.vision_positions = torch.empty(0, dtype=torch.long)
        return self._write(task.request_id, inputs, None, time.perf_counter() - start)

    def _write(self, request_id: str, inputs, grid, seconds: float) -> LayoutTaskOutput:
        shm = self.context.shm_dir
        pixel_ref = write_shared(inputs.pixel_values, shm, request_id, "pixels") if inputs.pixel_values is not None else None
        return LayoutTaskOutput(
            request_id=request_id,
            input_ids=write_shared(inputs.input_ids, shm, request_id, "ids"),
            position_ids=write_shared(inputs.position_ids, shm, request_id, "positions"),
            vision_positions=write_shared(inputs.vision_positions, shm, request_id, "vision_positions"),
            pixel_values=pixel_ref,
            grid_thw=[list(grid)] if grid else [],
            num_query_tokens=inputs.num_query_tokens,
            rope_delta=inputs.rope_delta,
            num_visual_tokens=int(inputs.vision_positions.numel()),
            seconds=seconds,
        )


def read_prompt_inputs(layout: LayoutTaskOutput):
    """`LayoutTaskOutput` (shared-memory refs) -> `PromptInputs` mapped zero-copy."""
    from spava.models.runner import PromptInputs

    return PromptInputs(
        input_ids=read_shared(layout.input_ids),
        position_ids=read_shared(layout.position_ids),
        rope_delta=layout.rope_delta,
        num_query_tokens=layout.num_query_tokens,
        pixel_values=read_shared(layout.pixel_values) if layout.pixel_values is not None else None,
        grid_thw=[tuple(g) for g in layout.grid_thw],
        vision_positions=read_shared(layout.vision_positions),
    )
