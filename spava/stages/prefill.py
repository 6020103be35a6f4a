"""`prefill` stage: sequence-parallel prefill of one request on the W prefill ranks.

Builds the rank's local token shard from the layout (ids, positions sliced by the plan), fills the
visual embeddings (received from encoder ranks, or encoded here when colocated), and runs every
decoder layer with the configured attention method. The result (KV cache, last-token logits on the
decode rank) stays in this process for the `decode` stage.
"""

from __future__ import annotations

import time

import torch

from spava.attention.registry import ShortInputRule, get_method
from spava.comm.collectives import Pending, SPComm, recv_async
from spava.comm.messages import FramesDoneOutput, ModelTaskReq
from spava.models.inputs import PromptInputs, read_prompt_inputs
from spava.models.loading import build_adapter
from spava.models.memory import OverBudgetError
from spava.models.runner import ModelRunner
from spava.models.vision_parallel import route_for, transfer_tag
from spava.progress import ProgressBar
from spava.stages.base import BadInputError, PrefillResult, Stage, StageContext


class PrefillWorker(Stage):
    name = "prefill"

    def __init__(self, context: StageContext, model_config, prefill_config, decode_config):
        self.context = context
        self.model_config = model_config
        self.config = prefill_config
        self.decode_config = decode_config
        self.runner: ModelRunner | None = None
        self._seq = 0

    @classmethod
    def from_config(cls, config, context: StageContext) -> "PrefillWorker":
        return cls(context, config.model, config.prefill, config.decode)

    def setup(self) -> None:
        placement = self.context.placement
        parts = ("vision", "text") if placement.is_colocated else ("text",)
        adapter = build_adapter(self.model_config, parts, self.context.device)
        feed = None if placement.is_colocated else self._remote_vision_feed
        self.runner = ModelRunner(adapter, get_method(self.config.attention), SPComm(self.context.group),
                                  mlp_chunk_size=self.config.mlp_chunk_size, vision_feed=feed,
                                  use_cuda_graph=self.decode_config.cuda_graph,
                                  short_inputs=ShortInputRule.from_config(self.config),
                                  use_tensor_parallel=self._use_tensor_parallel(),
                                  progress=self._progress_callback("prefill layers"),
                                  encode_progress=self._progress_callback("encode grids"))

    def _use_tensor_parallel(self) -> bool:
        mode = self.decode_config.tensor_parallel
        if mode == "auto":
            return str(self.context.device).startswith("cuda")
        return mode == "on"

    def _progress_callback(self, description: str):
        """A progress bar on the first prefill rank only (one bar per request, not W)."""
        if self.context.is_quiet or self.context.rank != self.context.placement.num_encoders:
            return None

        return ProgressBar(description)

    def _remote_vision_feed(self, inputs: PromptInputs, ctx, hidden: torch.Tensor, timer) -> None:
        """Receive this rank's visual feature rows from every encoder rank."""
        placement, adapter = self.context.placement, self.runner.adapter
        _, _, table = route_for(self.runner.method_for(inputs.num_tokens), inputs, placement, self.runner.merge_size)
        positions = table.recv_positions[ctx.plan.rank]
        buffers, pending = [], Pending()
        with timer.host_span("receive_s"):
            for encoder, local in enumerate(positions):
                if local.numel():
                    buffer = hidden.new_empty((local.numel(), adapter.visual_width))
                    pending.works += recv_async(buffer, encoder, transfer_tag(self._seq)).works
                    buffers.append((local, buffer))
            pending.wait()
        for local, buffer in buffers:
            adapter.place_visual(hidden, local.to(hidden.device), buffer)

    def process(self, task: ModelTaskReq) -> PrefillResult:
        start = time.perf_counter()
        self._seq = task.seq
        if self.runner.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.runner.device)
        placement = self.context.placement
        inputs = read_prompt_inputs(task.layout, self.runner.adapter.vision_spec if placement.is_colocated else None)
        max_new_tokens = int(task.sampling.get("max_new_tokens", self.decode_config.max_new_tokens))
        frames_done = FramesDoneOutput(task.request_id, self.context.worker_id)  # frees them during the prefill
        try:
            state = self.runner.prefill(inputs, max_new_tokens=max_new_tokens,
                                        on_visual_done=lambda: self.context.send(frames_done))
        except OverBudgetError as error:
            raise BadInputError(str(error)) from None
        return PrefillResult(task, inputs, state, time.perf_counter() - start)
