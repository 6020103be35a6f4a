"""Runs one request through a model adapter on W ranks: frame-parallel vision, sharded prefill,
exact distributed decoding. Every rank calls the same methods with the same `PromptInputs`.

The rank that holds the last prompt token (`plan.decode_rank`) computes logits and samples; the
token (and a stop flag) is broadcast so that every rank runs the next decode step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from spava.attention.base import AttentionMethod, AttnContext
from spava.comm.collectives import SPComm
from spava.models.decoder import ShardedDecoder
from spava.models.generation import SamplingParams, sample_token
from spava.models.kv_cache import DistributedKVCache
from spava.models.vision_parallel import assign_units, encode_and_route, plan_route_table, plan_vision_units
from spava.plan.sequence import SequencePlan


@dataclass
class PromptInputs:
    """One request's prompt, identical on every rank (CPU tensors).

    Attributes:
        input_ids: `[N]` token ids of the full prompt (context + query).
        position_ids: `[3, N]` M-RoPE positions over the full prompt (or `[N]` for text-only models).
        rope_delta: decode position offset (next token position = N + step + rope_delta).
        num_query_tokens: length of the trailing query block.
        pixel_values: `[P, C*T*p*p]` pixel rows of every vision item (images first, then videos).
        grid_thw: (t, h, w) per vision item, same order.
        vision_positions: `[n_vis]` global position of each merged vision embedding, same order.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    rope_delta: int = 0
    num_query_tokens: int = 0
    pixel_values: torch.Tensor | None = None
    grid_thw: list[tuple[int, int, int]] = field(default_factory=list)
    vision_positions: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())


@dataclass
class PrefillState:
    plan: SequencePlan
    ctx: AttnContext
    cache: DistributedKVCache
    logits: torch.Tensor | None  # `[vocab]` float32 of the last prompt token, on the decode rank only


@dataclass
class GenerationOutput:
    token_ids: list[int]
    finish_reason: str  # "eos" | "stop" | "length" | "cancelled"
    timings: dict[str, float]
    first_token_logits: torch.Tensor | None  # decode rank only


class ModelRunner:
    """Per-rank driver of one model adapter with one attention method."""

    def __init__(self, adapter, method: AttentionMethod, comm: SPComm, *, mlp_chunk_size: int = 8192,
                 progress: Callable[[int, int], None] | None = None,
                 vision_feed: Callable[["PromptInputs", AttnContext, torch.Tensor], None] | None = None,
                 encode_progress: Callable[[int, int], None] | None = None):
        """`vision_feed(inputs, ctx, hidden)` fills visual embeddings into the local `[S, d]` hidden
        states; the default encodes colocated on the prefill ranks (`colocated_vision_feed`)."""
        self.adapter = adapter
        self.vision_feed = vision_feed if vision_feed is not None else self.colocated_vision_feed
        self.encode_progress = encode_progress
        self.method = method
        self.comm = comm
        self.decoder = ShardedDecoder(adapter.decoder_modules(), method, mlp_chunk_size, progress)
        self.merge_size = adapter.token_ids().spatial_merge_size if hasattr(adapter, "token_ids") else 1

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    def _embed_local(self, inputs: PromptInputs, plan: SequencePlan, ctx: AttnContext) -> torch.Tensor:
        hidden = self.decoder.embed(plan.slice_local(inputs.input_ids).to(self.device))
        if inputs.pixel_values is not None and inputs.grid_thw:
            self.vision_feed(inputs, ctx, hidden)
        return hidden

    def colocated_vision_feed(self, inputs: PromptInputs, ctx: AttnContext, hidden: torch.Tensor) -> None:
        """Every prefill rank encodes a share of the grids; one all-to-all delivers the rows."""
        units = plan_vision_units(inputs.grid_thw, self.merge_size)
        assignment = assign_units(units, self.comm.world_size)
        table = plan_route_table(units, assignment, inputs.vision_positions, ctx.peer_plans)
        encode_and_route(self.adapter.encode, inputs.pixel_values, units, assignment, table, hidden, self.comm,
                         self.encode_progress)

    @torch.inference_mode()
    def prefill(self, inputs: PromptInputs) -> PrefillState:
        plan = self.method.plan(inputs.num_tokens, inputs.num_query_tokens, self.comm.world_size, self.comm.rank)
        ctx = self.method.context(plan, self.comm, self.device)
        hidden = self._embed_local(inputs, plan, ctx)
        positions = plan.slice_local(inputs.position_ids, dim=-1).to(self.device)
        hidden, cache = self.decoder.prefill(hidden, positions, ctx)
        logits = None
        if plan.rank == plan.decode_rank:
            if int(plan.local_token_ids()[-1]) != inputs.num_tokens - 1:
                raise AssertionError("the decode rank must hold the last prompt token")
            logits = self.decoder.logits(hidden[-1:])[0]
        return PrefillState(plan, ctx, cache, logits)

    def _broadcast_token(self, token: int, reason: int, src: int) -> tuple[int, int]:
        payload = torch.tensor([token, reason], dtype=torch.long)
        self.comm.broadcast(payload, src)
        return int(payload[0]), int(payload[1])

    def generate(self, inputs: PromptInputs, params: SamplingParams, **hooks) -> GenerationOutput:
        """Prefill, then decode (see `decode_loop` for the hooks)."""
        start = time.perf_counter()
        state = self.prefill(inputs)
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

        The decode rank samples, calls `on_token([token])` (streaming) and `should_cancel()`; the
        token and the stop reason are broadcast so every rank runs the same steps.
        """
        is_sampler = state.plan.rank == state.plan.decode_rank
        generator = params.generator()
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_token_ids))
        tokens: list[int] = []
        logits, reason = state.logits, _CONTINUE
        start = time.perf_counter()
        for step in range(params.max_new_tokens):
            token, reason = -1, _CONTINUE
            if is_sampler:
                token = sample_token(logits, params, generator)
                reason = _stop_reason(token, tokens, stop_ids, params, decode_text, should_cancel)
            token, reason = self._broadcast_token(token, reason, state.plan.decode_rank)
            if reason != _CANCELLED:
                tokens.append(token)
                if is_sampler and on_token is not None:
                    on_token([token])
            if reason != _CONTINUE or step == params.max_new_tokens - 1:
                break
            logits = self._decode_step(token, inputs.num_tokens + step + inputs.rope_delta, state)
        reason = _LENGTH if reason == _CONTINUE else reason
        return GenerationOutput(tokens, _REASONS[reason], {"decode_s": time.perf_counter() - start}, state.logits)

    def _decode_step(self, token: int, position: int, state: PrefillState) -> torch.Tensor | None:
        hidden = self.decoder.embed(torch.tensor([token], device=self.device))
        ids = torch.tensor([position], device=self.device)
        position_ids = ids.expand(3, 1) if inputs_are_mrope(self.decoder) else ids
        hidden = self.decoder.decode(hidden, position_ids, state.cache, state.ctx)
        if state.plan.rank != state.plan.decode_rank:
            return None
        return self.decoder.logits(hidden)[0]


def inputs_are_mrope(decoder: ShardedDecoder) -> bool:
    return decoder.m.is_mrope


_CONTINUE, _EOS, _STOP, _CANCELLED, _LENGTH = 0, 1, 2, 3, 4
_REASONS = {_EOS: "eos", _STOP: "stop", _CANCELLED: "cancelled", _LENGTH: "length"}


def _stop_reason(token, tokens, stop_ids, params: SamplingParams, decode_text, should_cancel) -> int:
    if should_cancel is not None and should_cancel():
        return _CANCELLED
    if token in stop_ids:
        return _EOS
    if params.stop_strings and decode_text is not None:
        text = decode_text(tokens + [token])
        if any(stop in text for stop in params.stop_strings):
            return _STOP
    return _CONTINUE
