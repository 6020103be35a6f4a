"""Runs one request through a model adapter on W ranks: frame-parallel vision, sharded prefill,
exact distributed decoding. Every rank calls the same methods with the same `PromptInputs`.

The rank that holds the last prompt token (`plan.decode_rank`) samples; the token (and a cancel
flag) is broadcast so that every rank runs the next decode step (`spava.models.decode_step`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from spava.attention.base import AttentionMethod, AttnContext
from spava.attention.selection_log import SelectionLog
from spava.comm.collectives import SPComm
from spava.models.decoder import ShardedDecoder
from spava.models.decode_step import FLAG_CANCEL, DecodeEngine
from spava.models.generation import SamplingParams
from spava.models.inputs import PromptInputs
from spava.models.kv_cache import DistributedKVCache
from spava.models.memory import DecoderShape, OverBudgetError, PrefillMemory, check_fits, estimate_prefill_memory
from spava.models.timing import StageTimer
from spava.models.vision_parallel import (assign_units, encode_and_route, local_vision_rows, plan_route_table,
                                          plan_vision_units)
from spava.plan.sequence import SequencePlan


@dataclass
class PrefillState:
    plan: SequencePlan
    ctx: AttnContext
    cache: DistributedKVCache
    logits: torch.Tensor | None  # `[vocab]` float32 of the last prompt token, on the decode rank only
    timings: dict[str, float] = field(default_factory=dict)  # this rank's seconds per prefill stage
    final_hidden: torch.Tensor | None = None  # `[S, hidden]` local final hidden states (before the last
    # norm), plan order; only when prefill(keep_hidden=True) asked for them (evaluation of context rows)


@dataclass
class GenerationOutput:
    token_ids: list[int]
    finish_reason: str  # "eos" | "stop" | "length" | "cancelled"
    timings: dict[str, float]
    first_token_logits: torch.Tensor | None  # decode rank only


class ModelRunner:
    """Per-rank driver of one model adapter with one attention method."""

    def __init__(self, adapter, method: AttentionMethod, comm: SPComm, *, mlp_chunk_size: int = 8192,
                 use_cuda_graph: bool = True, use_tensor_parallel: bool = True, short_inputs=None,
                 progress: Callable[[int, int], None] | None = None,
                 vision_feed: Callable[["PromptInputs", AttnContext, torch.Tensor], None] | None = None,
                 encode_progress: Callable[[int, int], None] | None = None):
        """`vision_feed(inputs, ctx, hidden, timer)` fills visual embeddings into the local `[S, d]`
        hidden states; the default encodes colocated on the prefill ranks (`colocated_vision_feed`)."""
        self.adapter = adapter
        self.vision_feed = vision_feed if vision_feed is not None else self.colocated_vision_feed
        self.encode_progress = encode_progress
        self.method = method
        self.comm = comm
        self.decoder = ShardedDecoder(adapter.decoder_modules(), method, mlp_chunk_size, progress)
        self.merge_size = adapter.vision_spec.merge_size if adapter.vision_spec is not None else 1
        self.use_cuda_graph = use_cuda_graph  # decode steps as CUDA graph replays (one rank, CUDA)
        self.use_tensor_parallel = use_tensor_parallel  # decode's MLP and LM head split over the ranks
        self.short_inputs = short_inputs  # a ShortInputRule: an exact method for short prompts (or None)

    def method_for(self, num_tokens: int) -> AttentionMethod:
        """The method a prompt of `num_tokens` runs with (see `ShortInputRule`)."""
        if self.short_inputs is None:
            return self.method
        return self.short_inputs.choose(self.method, num_tokens, self.comm.world_size)

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    def _embed_local(self, inputs: PromptInputs, plan: SequencePlan, ctx: AttnContext,
                     timer: StageTimer) -> tuple[torch.Tensor, dict | None]:
        """Local input embeddings `[S, d]` with the visual rows filled, and the adapter's per-layer
        additions for those rows (DeepStack; None for most models)."""
        hidden = self.decoder.embed(plan.slice_local(inputs.input_ids).to(self.device))
        if not inputs.has_vision:
            return hidden, None
        self._take_layer_additions()  # drop what a request that failed mid-feed may have left
        self.vision_feed(inputs, ctx, hidden, timer)
        return hidden, self._take_layer_additions()

    def _take_layer_additions(self) -> dict | None:
        take = getattr(self.adapter, "take_layer_additions", None)
        return take() if take is not None else None

    def colocated_vision_feed(self, inputs: PromptInputs, ctx: AttnContext, hidden: torch.Tensor,
                              timer: StageTimer) -> None:
        """Every prefill rank encodes a share of the grids; one all-to-all delivers the rows."""
        units = plan_vision_units(inputs.grid_thw, self.merge_size)
        assignment = assign_units(units, self.comm.world_size)
        table = plan_route_table(units, assignment, inputs.vision_positions, ctx.peer_plans)
        source = inputs.visual_source()
        source.timer = timer
        rows = encode_and_route(self.adapter.encode, source, units, assignment, table, hidden, self.comm,
                                self.adapter.visual_width, self.encode_progress, timer)
        self.adapter.place_visual(hidden, local_vision_rows(table, ctx.plan.rank).to(hidden.device), rows)

    @torch.inference_mode()
    def prefill(self, inputs: PromptInputs, max_new_tokens: int = 256, *, keep_hidden: bool = False,
                selections: SelectionLog | None = None,
                on_visual_done: Callable[[], None] | None = None) -> PrefillState:
        """Vision (colocated or received) + every decoder layer over this rank's tokens.

        The state's timings hold this rank's `frames_wait_s`, `transfer_s`, `preprocess_s`,
        `encode_s` (see `spava.models.vision_inputs`) and `prefill_s` (GPU time of the LLM layers, from CUDA events).
        `keep_hidden` keeps the local final hidden states in the state; `selections` records the
        approximate methods' passing choices (both for evaluation; off by default).
        `on_visual_done()` is called once this rank has every visual row it needs (its frames are not
        read again), before the decoder layers run.
        """
        timer = StageTimer(self.device)
        method = self.method_for(inputs.num_tokens)
        plan = method.plan(inputs.num_tokens, inputs.num_query_tokens, self.comm.world_size, self.comm.rank)
        ctx = method.context(plan, self.comm, self.device)
        if selections is not None:
            ctx = dataclasses.replace(ctx, selections=selections)
        try:
            hidden, additions = self._embed_local(inputs, plan, ctx, timer)
        finally:
            if inputs.visual is not None:
                inputs.visual.close()
        if on_visual_done is not None and inputs.has_vision:
            on_visual_done()
        self.check_memory(plan, hidden, extra_capacity=max_new_tokens + 1)
        positions = plan.slice_local(inputs.position_ids, dim=-1).to(self.device)
        with timer.span("prefill_s"):
            hidden, cache = self.decoder.prefill(hidden, positions, ctx, extra_capacity=max_new_tokens + 1,
                                                 layer_additions=additions)
        logits = None
        if plan.rank == plan.decode_rank:
            if int(plan.local_token_ids()[-1]) != inputs.num_tokens - 1:
                raise AssertionError("the decode rank must hold the last prompt token")
            logits = self.decoder.logits(hidden[-1:])[0]
        return PrefillState(plan, ctx, cache, logits, timer.totals(), hidden if keep_hidden else None)

    def check_memory(self, plan: SequencePlan, hidden: torch.Tensor, extra_capacity: int,
                     free_bytes: int | None = None) -> None:
        """Refuse (OverBudgetError, on every rank alike) a prefill that cannot fit some rank's free GPU
        memory (`spava.models.memory`). `hidden`: this rank's `[S, d]` embeddings; `free_bytes`: this
        rank's free memory (None: read from CUDA; off CUDA the check is skipped)."""
        if free_bytes is None:
            if self.device.type != "cuda":
                return
            free, _ = torch.cuda.mem_get_info(self.device)
            free_bytes = free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        num_owned = sum(stop - start for start, stop in plan.owned_local_ranges())
        need = estimate_prefill_memory(self.decoder_shape(hidden), plan.num_local_tokens, num_owned,
                                       extra_capacity, self.decoder.mlp_chunk_size, self.decoder.ops.is_compiled)
        mine = torch.tensor([need.kv_cache_bytes, need.activation_bytes, free_bytes], dtype=torch.int64,
                            device=self.device)
        every, pending = self.comm.all_gather_stacked(mine)
        pending.wait()
        shortfalls = [(int(kv + act - room), rank) for rank, (kv, act, room) in enumerate(every.tolist())]
        shortfall, rank = max(shortfalls)
        if shortfall > 0:
            kv, act, room = every[rank].tolist()
            message = check_fits(PrefillMemory(int(kv), int(act)), int(room), rank=rank,
                                 world_size=self.comm.world_size, num_tokens=plan.num_tokens)
            raise OverBudgetError(message)

    def decoder_shape(self, hidden: torch.Tensor) -> DecoderShape:
        """The decoder's sizes for the memory estimate (`hidden` gives the width and dtype)."""
        m = self.decoder.m
        mlp = m.layers[0].mlp
        projection = getattr(mlp, "gate_proj", None) or getattr(mlp, "up_proj", None) or getattr(mlp, "fc1", None)
        intermediate = projection.out_features if projection is not None else 4 * hidden.shape[-1]
        return DecoderShape(len(m.layers), hidden.shape[-1], intermediate, m.num_heads, m.num_kv_heads,
                            m.head_dim, hidden.element_size())

    def generate(self, inputs: PromptInputs, params: SamplingParams, **hooks) -> GenerationOutput:
        """Prefill, then decode (see `decode_loop` for the hooks)."""
        start = time.perf_counter()
        state = self.prefill(inputs, max_new_tokens=params.max_new_tokens)
        prefill_s = time.perf_counter() - start
        output = self.decode_loop(inputs, state, params, **hooks)
        output.timings["prefill_s"] = prefill_s
        return output

    @torch.inference_mode()
    def decode_loop(self, inputs: PromptInputs, state: PrefillState, params: SamplingParams, *,
                    decode_text: Callable[[list[int]], str] | None = None, eos_token_ids: tuple[int, ...] = (),
                    on_token: Callable[[list[int]], None] | None = None,
                    should_cancel: Callable[[], bool] | None = None) -> GenerationOutput:
        """Decode until EOS / a stop token / a stop string / max_new_tokens / cancellation.

        The device runs one step ahead of the host (`DecodeEngine`): step t is queued before the
        token of step t-1 is read back, streamed (`on_token([token])` on the sampling rank) and
        checked. The sampling rank's `should_cancel()` rides with the broadcast token, and every
        rank applies the same stop rules to the same tokens, so all ranks stop at the same step.
        With stop strings every rank needs `decode_text`.
        """
        if params.stop_strings and decode_text is None:
            raise ValueError("stop strings need decode_text on every rank")
        engine = DecodeEngine(self.decoder, state, self.comm, params, inputs.num_tokens + inputs.rope_delta,
                              use_graph=self.use_cuda_graph and self.comm.world_size == 1,
                              use_tensor_parallel=self.use_tensor_parallel)
        is_cancelled = (lambda: should_cancel()) if engine.is_sampler and should_cancel is not None else (lambda: False)
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
        tokens: list[int] = []
        reason, timings = _CONTINUE, {}
        start = time.perf_counter()
        engine.launch_first(is_cancelled())
        for step in range(1, params.max_new_tokens + 1):
            if step < params.max_new_tokens:
                engine.launch_step(is_cancelled())
            token, flags = engine.read(step - 1)
            if step == 1:
                timings["first_token_s"] = time.perf_counter() - start
            if flags & FLAG_CANCEL:
                reason = _CANCELLED
                break
            tokens.append(token)
            if engine.is_sampler and on_token is not None:
                on_token([token])
            reason = _stop_reason(token, tokens, stop_ids, params, decode_text)
            if reason != _CONTINUE:
                break
        timings["decode_s"] = time.perf_counter() - start
        reason = _LENGTH if reason == _CONTINUE else reason
        return GenerationOutput(tokens, _REASONS[reason], timings, state.logits)


_CONTINUE, _EOS, _STOP, _CANCELLED, _LENGTH = 0, 1, 2, 3, 4
_REASONS = {_EOS: "eos", _STOP: "stop", _CANCELLED: "cancelled", _LENGTH: "length"}


def _stop_reason(token: int, tokens: list[int], stop_ids, params: SamplingParams, decode_text) -> int:
    """Why to stop after `token` (the last of `tokens`), or _CONTINUE."""
    if token in stop_ids:
        return _EOS
    if params.stop_strings:
        text = decode_text(tokens)
        if any(stop in text for stop in params.stop_strings):
            return _STOP
    return _CONTINUE
