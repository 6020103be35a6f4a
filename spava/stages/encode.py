"""`encode` stage: frame-parallel vision encoding on dedicated encoder ranks (disaggregated).

Encoder e of E encodes its consecutive share of temporal grids and sends each prefill rank exactly
the embedding rows of the vision tokens that rank holds (point-to-point, NCCL on GPU / gloo on CPU).
When no encoder devices are configured the prefill ranks encode themselves (colocated, see
`ModelRunner.colocated_vision_feed`) and this stage is not started.

Batches (`EncodeBatchReq`, see `spava.runtime.model_groups`): the encoder plans every request, runs
the vision tower once on its share of all their grids (`encode_units_batch`), then sends each
request's rows in seq order (tag `transfer_tag(seq)`, as for one request) and answers it with its
own `ModelTaskOutput` as soon as its sends completed. A `ModelTaskReq` is a batch of one.

Failures, per request, one `TaskError` each: a request that cannot be planned (its layout unreadable,
its route table impossible) sends nothing, and the prefill ranks, planning it the same way, fail
before posting any receive. If the tower call fails, every request with grids in it fails (its
error is answered at once), and the encoder still sends zero rows of the right shapes in its place,
so every receive the prefill ranks post for it is matched and nothing waits on a transfer that will
never come; the scheduler keeps the failed requests' inputs readable for the prefill ranks and
cancels their decoding. A send that raises (a broken process group) fails that request and every
later one of the batch, which are not sent: as for one request before batching, the prefill ranks'
receives then fail on their own timeout, or the scheduler restarts the model ranks (health checks).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from spava.attention.registry import ShortInputRule, get_method
from spava.comm.collectives import Pending, send_async
from spava.comm.messages import EncodeBatchReq, ModelTaskOutput, ModelTaskReq, TaskError
from spava.models.inputs import read_prompt_inputs
from spava.models.loading import build_adapter
from spava.models.timing import StageTimer
from spava.models.vision_inputs import VisualSource
from spava.models.vision_parallel import RouteTable, encode_units_batch, route_for, transfer_tag
from spava.progress import ProgressBar
from spava.stages.base import BadInputError, Stage, StageContext


@dataclass
class PlannedRequest:
    """One request of a batch on this encoder rank: its plan, then its embeddings or its error."""

    task: ModelTaskReq
    source: Optional[VisualSource] = None  # the request's pixel rows (streamed frames, preprocessed here)
    units: tuple = ()
    assignment: tuple = ()
    table: Optional[RouteTable] = None  # None: this rank has none of its grids, so encodes and sends nothing
    embeds: Optional[torch.Tensor] = None  # `[n_rows, visual_width]` of this rank's units, after encoding
    error: Optional[TaskError] = None


class VisionEncoder(Stage):
    name = "encode"

    def __init__(self, context: StageContext, model_config, prefill_config):
        self.context = context
        self.model_config = model_config
        self.method = get_method(prefill_config.attention)
        self.short_inputs = ShortInputRule.from_config(prefill_config)  # as the prefill ranks choose
        self.adapter = None

    @classmethod
    def from_config(cls, config, context: StageContext) -> "VisionEncoder":
        return cls(context, config.model, config.prefill)

    def setup(self) -> None:
        self.adapter = build_adapter(self.model_config, ("vision",), self.context.device)

    def _progress(self):
        if self.context.is_quiet or self.context.rank != 0:
            return None

        return ProgressBar("encode grids")

    def process(self, task: ModelTaskReq) -> ModelTaskOutput | TaskError:
        """One request: its `ModelTaskOutput`, or its `TaskError`."""
        (output,) = self.run_batch([task])
        return output

    def process_batch(self, batch: EncodeBatchReq) -> None:
        """Several requests in one tower call; each is answered (sent) as soon as its rows are sent."""
        for output in self.run_batch(batch.tasks):
            self.context.send(output)

    def run_batch(self, tasks: list[ModelTaskReq]) -> Iterator[ModelTaskOutput | TaskError]:
        """Plan every task, encode them in one call, send their rows in seq order.

        Yields one answer per task: the `TaskError`s first, then each `ModelTaskOutput` as soon as
        that request's sends completed (timings: the batch's `frames_wait_s`, `transfer_s`,
        `preprocess_s`, `encode_s` (tower GPU time), `encode_stage_s` (wall time from the batch's
        start), `encode_batch_size`).
        """
        start = time.perf_counter()
        planned = [self._plan(task) for task in tasks]
        try:
            seconds = self._encode([p for p in planned if p.table is not None])
        finally:
            for request in planned:
                if request.source is not None:
                    request.source.close()
        # failures are answered before any transfer waits: the scheduler fails them (and cancels their
        # decoding) at once; their placeholder rows are still sent below, in seq order
        yield from (p.error for p in planned if p.error is not None)
        for index, request in enumerate(planned):
            try:
                self._send(request)
            except Exception as error:  # noqa: BLE001 - the process group is broken: fail what is left
                self.context.logger.error("sending the embeddings of %s failed:\n%s", request.task.request_id,
                                          traceback.format_exc())
                yield from self._abandon(planned[index:], error)
                return
            if request.error is None:
                timings = {**seconds, "encode_stage_s": time.perf_counter() - start,
                           "encode_batch_size": float(len(tasks))}
                yield ModelTaskOutput(request.task.request_id, self.context.worker_id, [], "", timings, False)

    def _plan(self, task: ModelTaskReq) -> PlannedRequest:
        """Read the request's layout and route its grids (pure); an error fails only this request."""
        try:
            inputs = read_prompt_inputs(task.layout, self.adapter.vision_spec)
            if not inputs.has_vision:
                return PlannedRequest(task)
            merge = self.adapter.vision_spec.merge_size
            method, num_prefill = self.method, self.context.placement.num_prefill
            if self.short_inputs is not None:
                method = self.short_inputs.choose(method, inputs.num_tokens, num_prefill)
            units, assignment, table = route_for(method, inputs, self.context.placement, merge)
        except Exception as error:  # noqa: BLE001 - the prefill ranks fail the same way, before any receive
            self.context.logger.error("planning %s failed:\n%s", task.request_id, traceback.format_exc())
            return PlannedRequest(task, error=self._error(task, error))
        start, stop = assignment[self.context.rank]
        has_units = stop > start
        return PlannedRequest(task, inputs.visual_source(), units, assignment, table if has_units else None)

    def _encode(self, requests: list[PlannedRequest]) -> dict[str, float]:
        """One tower call over this rank's units of `requests`; if it fails, each of them gets a TaskError.
        Returns the batch's seconds per stage (frames_wait_s, transfer_s, preprocess_s, encode_s)."""
        timer = StageTimer(self.adapter.device)
        if not requests:
            return {}
        for request in requests:
            request.source.timer = timer
        try:
            embeds = encode_units_batch(self.adapter.encode, [r.source for r in requests],
                                        [r.units for r in requests], [r.assignment for r in requests],
                                        self.context.rank, self.adapter.device, self.adapter.dtype, self._progress(),
                                        timer)
        except Exception as error:  # noqa: BLE001 - fails these requests, the worker keeps serving
            self.context.logger.error("encoding a batch of %d request(s) failed:\n%s", len(requests),
                                      traceback.format_exc())
            for request in requests:
                request.error = self._error(request.task, error, f"encoding a batch of {len(requests)} request(s)")
            return {}
        for request, rows in zip(requests, embeds, strict=True):
            request.embeds = rows
        return timer.totals()

    def _send(self, request: PlannedRequest) -> None:
        """This rank's rows of one request to every prefill rank that holds them; waits for all."""
        if request.table is None:
            return
        placement, rank = self.context.placement, self.context.rank
        pending = Pending()
        for receiver, rows in enumerate(request.table.send_rows[rank]):
            if rows.numel():
                pending.works += send_async(self._payload(request, rows), placement.num_encoders + receiver,
                                            transfer_tag(request.task.seq)).works
        pending.wait()

    def _payload(self, request: PlannedRequest, rows: torch.Tensor) -> torch.Tensor:
        """`[len(rows), visual_width]` rows for one receiver: the embeddings, or zeros when encoding failed
        (so the receiver's matching receive completes; the request has failed already)."""
        if request.embeds is None:
            return torch.zeros(rows.numel(), self.adapter.visual_width, dtype=self.adapter.dtype,
                               device=self.adapter.device)
        return request.embeds.index_select(0, rows.to(request.embeds.device))

    def _abandon(self, requests: list[PlannedRequest], error: Exception) -> Iterator[TaskError]:
        """A send of `requests[0]` raised: TaskErrors for it and every later request not yet answered;
        nothing more is sent."""
        failed = requests[0].task.request_id
        for request in requests:
            if request.error is None:
                where = ("sending its embeddings to the prefill ranks" if request is requests[0]
                         else f"not sent: the transfer of {failed} failed before it")
                yield self._error(request.task, error, where)

    def _error(self, task: ModelTaskReq, error: Exception, where: str = "") -> TaskError:
        kind = "bad_input" if isinstance(error, BadInputError) else "internal"
        text = f"{type(error).__name__}: {error}" if kind == "internal" else str(error)
        return TaskError(task.request_id, self.context.worker_id, "model", kind, f"{where}: {text}" if where else text)
