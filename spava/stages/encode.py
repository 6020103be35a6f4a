"""`encode` stage: frame-parallel vision encoding on dedicated encoder ranks (disaggregated).

Encoder e of E encodes its consecutive share of temporal grids and sends each prefill rank exactly
the embedding rows of the vision tokens that rank holds (point-to-point, NCCL on GPU / gloo on CPU).
When no encoder devices are configured the prefill ranks encode themselves (colocated, see
`ModelRunner.colocated_vision_feed`) and this stage is not started.
"""

from __future__ import annotations

import time

from spava.attention.registry import get_method
from spava.comm.collectives import Pending, send_async
from spava.comm.messages import ModelTaskOutput, ModelTaskReq
from spava.models.loading import build_adapter
from spava.models.vision_parallel import assign_units, encode_units, plan_route_table, plan_vision_units
from spava.stages.base import Stage, StageContext
from spava.stages.layout import read_prompt_inputs


def route_for(method, inputs, placement, merge_size: int):
    """Units, their assignment to the E encoders, and the route table to the W prefill ranks (pure)."""
    units = plan_vision_units(inputs.grid_thw, merge_size)
    assignment = assign_units(units, placement.num_encoders)
    plans = tuple(method.plan(inputs.num_tokens, inputs.num_query_tokens, placement.num_prefill, r)
                  for r in range(placement.num_prefill))
    return units, assignment, plan_route_table(units, assignment, inputs.vision_positions, plans)


def transfer_tag(seq: int) -> int:
    """P2P tag of one request (gloo matches on it; NCCL orders per peer pair instead)."""
    return seq % (1 << 20)


class VisionEncoder(Stage):
    name = "encode"

    def __init__(self, context: StageContext, model_config, attention_config):
        self.context = context
        self.model_config = model_config
        self.method = get_method(attention_config)
        self.adapter = None

    @classmethod
    def from_config(cls, config, context: StageContext) -> "VisionEncoder":
        return cls(context, config.model, config.prefill.attention)

    def setup(self) -> None:
        self.adapter = build_adapter(self.model_config, ("vision",), self.context.device)

    def _progress(self):
        if self.context.is_quiet or self.context.rank != 0:
            return None
        from spava.runtime.progress import LayerProgress

        return LayerProgress("encode grids")

    def process(self, task: ModelTaskReq) -> ModelTaskOutput:
        start = time.perf_counter()
        inputs = read_prompt_inputs(task.layout)
        placement = self.context.placement
        if inputs.pixel_values is not None and inputs.grid_thw:
            merge = self.adapter.token_ids().spatial_merge_size
            units, assignment, table = route_for(self.method, inputs, placement, merge)
            rank = self.context.rank
            embeds = encode_units(self.adapter.encode, inputs.pixel_values, units, assignment, rank,
                                  self.adapter.device, self.adapter.dtype, self._progress())
            pending = Pending()
            for receiver, rows in enumerate(table.send_rows[rank]):
                if rows.numel():
                    payload = embeds.index_select(0, rows.to(embeds.device))
                    pending.works += send_async(payload, placement.num_encoders + receiver,
                                                transfer_tag(task.seq)).works
            pending.wait()
        timings = {"encode_s": time.perf_counter() - start}
        return ModelTaskOutput(task.request_id, self.context.worker_id, [], "", timings, False)
