"""Exact decoding over the distributed KV cache, one device-resident step per generated token.

`DecodeEngine` holds, for one request on one rank, everything a decode step touches at a fixed
address: the next token and its position, the number of valid cache rows, the KV cache (allocated
after prefill with room for the whole answer), the logits, and a small payload `[token, flags]`
that the sampling rank broadcasts. A step is: embed -> every layer (QKV, RoPE, append K/V on the
rank that owns new tokens, split-KV decode attention over the local shard, LSE merge across ranks,
output projection, MLP) -> logits -> sampling on the device -> broadcast. Nothing in it reads a
value back to the host, allocates per token on a graph replay, or depends on the host for shapes:
the cache length lives on the device, so on CUDA the layers are captured once in a CUDA graph and
replayed for every token (`use_graph`).

With W ranks, every rank already holds the full weights (sequence-parallel prefill needs them), so
decoding splits the MLP and the LM head across them (tensor parallel over the weights they hold:
rank r runs its slice of the intermediate width and of the vocabulary; one all-reduce per layer and
one all-gather of the logits per step): each rank reads 1/W of the largest weights per token
instead of all of them. Attention needs no split: each rank attends to its own KV shard and the
partials are LSE-merged (exact).

The host side (`runner.decode_loop`) runs one step ahead: it launches step t, then reads the token
of step t-1 from pinned memory, streams it, and decides whether to stop, so checking EOS, stop
strings and cancellation never blocks the device. Every rank reads the same broadcast tokens and
flags and applies the same rules, so all ranks stop at the same step.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spava.attention.exact import DistributedPartial
from spava.comm.collectives import SPComm
from spava.models.fused_ops import SWIGLU_MLP_TYPES
from spava.models.generation import SamplingParams

logger = logging.getLogger("spava.models")
FLAG_CANCEL = 1  # payload[1] bit: the sampling rank saw a cancellation before launching this step


def even_slices(size: int, world_size: int) -> list[tuple[int, int]]:
    """[start, stop) of `size` split over `world_size` ranks as evenly as possible (pure)."""
    base, extra = divmod(size, world_size)
    bounds, start = [], 0
    for rank in range(world_size):
        stop = start + base + (1 if rank < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


@dataclass
class TensorParallelSlices:
    """This rank's share of the decode's largest weights (views: nothing is copied).

    gate_up[i]: (gate `[I_r, d]`, up `[I_r, d]`) of layer i; down[i]: `[d, I_r]` (a column slice);
    lm_head: `[V_r, d]`; vocab: [start, stop) of this rank's logits; vocab_size: V.
    """

    gate_up: list[tuple[torch.Tensor, torch.Tensor]]
    down: list[torch.Tensor]
    lm_head: torch.Tensor
    vocab: tuple[int, int]
    vocab_size: int
    vocab_chunk: int  # ceil(V / W): every rank's padded logit slice, for one equal-sized all-gather

    @classmethod
    def of(cls, modules, rank: int, world_size: int) -> "TensorParallelSlices | None":
        """Slices of a model whose every MLP is a known SwiGLU module; None otherwise."""
        layers = modules.layers
        if any(type(layer.mlp).__name__ not in SWIGLU_MLP_TYPES for layer in layers):
            return None
        gate_up, down = [], []
        for layer in layers:
            mlp = layer.mlp
            start, stop = even_slices(mlp.gate_proj.weight.shape[0], world_size)[rank]
            gate_up.append((mlp.gate_proj.weight[start:stop], mlp.up_proj.weight[start:stop]))
            down.append(mlp.down_proj.weight[:, start:stop])
        vocab_size = modules.lm_head.weight.shape[0]
        vocab = even_slices(vocab_size, world_size)[rank]
        return cls(gate_up, down, modules.lm_head.weight[vocab[0]:vocab[1]], vocab, vocab_size,
                   -(-vocab_size // world_size))


class DeviceSampler:
    """Next-token choice on the device (no host sync): greedy, or temperature with top-k / top-p.

    Stochastic sampling uses the Gumbel-max trick with a seeded device generator: argmax of
    logits / T + Gumbel noise over the tokens that top-k / top-p keep, the same distribution as
    sampling from the softmax; `seed` makes it reproducible.
    """

    def __init__(self, params: SamplingParams, device: torch.device):
        self.params = params
        self.generator = None
        if params.temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed if params.seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor, out: torch.Tensor) -> None:
        """`[V]` float32 logits -> the chosen id, written into `out` (`[1]` int64)."""
        params = self.params
        if params.temperature == 0.0:
            torch.argmax(logits, dim=-1, keepdim=True, out=out)
            return
        scores = logits / params.temperature
        if params.top_k > 0:
            kth = torch.topk(scores, min(params.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            probs = torch.softmax(sorted_scores, dim=-1)
            # keep the smallest prefix whose mass reaches top_p (always at least one token)
            drop = torch.cumsum(probs, dim=-1) - probs >= params.top_p
            scores = scores.scatter(0, order, sorted_scores.masked_fill(drop, float("-inf")))
        uniform = torch.rand(scores.shape, generator=self.generator, device=scores.device, dtype=torch.float32)
        gumbel = -torch.log(-torch.log(uniform.clamp_(min=1e-20)))
        torch.argmax(scores + gumbel, dim=-1, keepdim=True, out=out)


class DecodeEngine:
    """One request's decode steps on one rank (see the module docstring).

    Args:
        decoder: the rank's `ShardedDecoder` (its modules, attention context, fused ops).
        state: the `PrefillState` (plan, attention context, KV cache sized for the answer).
        comm: the prefill ranks' `SPComm`.
        params: sampling parameters (the sampling rank samples).
        first_position: position id of the first generated token (N + rope_delta).
        use_graph: replay the layers as a CUDA graph (CUDA only).
        use_tensor_parallel: split the MLP and LM head over the ranks (W > 1).
        eager_steps: steps run eagerly before the graph is captured (they compile the ops for one
            row and create cuBLAS's workspace); None: 1 for the decoder's first capture, then 0.
    """

    def __init__(self, decoder, state, comm: SPComm, params: SamplingParams, first_position: int, *,
                 use_graph: bool = False, use_tensor_parallel: bool = True, eager_steps: int | None = None):
        self.decoder, self.state, self.comm, self.params = decoder, state, comm, params
        self.modules = decoder.m
        self.device = self.modules.embed_tokens.weight.device
        self.is_sampler = state.plan.rank == state.plan.decode_rank
        self.cache = state.cache
        self.tp = (TensorParallelSlices.of(self.modules, comm.rank, comm.world_size)
                   if use_tensor_parallel and comm.world_size > 1 else None)
        device, cache = self.device, state.cache
        self.token = torch.zeros(1, dtype=torch.long, device=device)
        self.position = torch.full((1,), first_position, dtype=torch.long, device=device)
        self.num_valid = torch.full((1,), cache.num_tokens, dtype=torch.int32, device=device)
        self.write_index = torch.full((1,), cache.num_tokens, dtype=torch.long, device=device)
        self.payload = torch.zeros(2, dtype=torch.long, device=device)
        self.flags_host = torch.zeros((2, 1), dtype=torch.long, pin_memory=device.type == "cuda")  # per slot
        self.host_tokens = torch.zeros((2, 2), dtype=torch.long, pin_memory=device.type == "cuda")
        self.events = [torch.cuda.Event() if device.type == "cuda" else None for _ in range(2)]
        self.logits = torch.zeros(self.modules.lm_head.weight.shape[0], dtype=torch.float32, device=device)
        self.sampler = DeviceSampler(params, device) if self.is_sampler else None
        self.scale = state.ctx.scale if state.ctx.scale is not None else 1.0 / math.sqrt(self.modules.head_dim)
        from spava_kernels.dispatch import DecodeAttention

        self.attention = DecodeAttention()  # the split-KV kernel and its workspace, shared by the layers
        self.use_graph = use_graph and device.type == "cuda"
        self.eager_steps = eager_steps if eager_steps is not None else (0 if decoder.has_captured_decode else 1)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.num_capture_failures = 0
        self.num_steps = 0
        if self.cache.is_owner and any(layer.capacity < cache.num_tokens + params.max_new_tokens - 1
                                       for layer in cache.layers):
            raise ValueError(f"the KV cache has room for {cache.layers[0].capacity - cache.num_tokens} new tokens, "
                             f"fewer than max_new_tokens={params.max_new_tokens}; prefill with that many")

    # ----- one step on the device -------------------------------------------------------------

    def _attention(self, index: int, q: torch.Tensor) -> torch.Tensor:
        """q `[1, Hq, D]` over this rank's cache of layer `index`, exact over all ranks -> `[1, Hq, D]`."""
        layer = self.cache.layers[index]
        length = self.num_valid if self.cache.is_owner else layer.length
        out, lse = self.attention(q, layer.storage_k, layer.storage_v, length, scale=self.scale,
                                  is_causal=self.cache.is_owner)
        if self.comm.world_size == 1:
            return out
        partial = DistributedPartial(self.comm)
        partial.share(out, lse)
        return partial.finish()[0].to(q.dtype)

    def _qkv(self, index: int, layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Normed `[1, d]` -> q `[1, Hq, D]`, k and v `[1, Hkv, D]` (RoPE applied); one GEMV when fused."""
        fused = self.decoder.fused[index]
        if fused is None:
            return self.decoder._qkv(layer, x, cos, sin)
        q, k, v = F.linear(x, fused.qkv_weight, fused.qkv_bias).split(fused.qkv_sizes, dim=-1)
        return self.decoder.rotate_qkv(layer, q, k, v, cos, sin)

    def _mlp(self, index: int, layer, x: torch.Tensor) -> torch.Tensor:
        """Normed `[1, d]` -> the MLP's output `[1, d]` (this rank's share summed over the ranks)."""
        ops = self.decoder.ops
        if self.tp is not None:
            gate, up = self.tp.gate_up[index]
            partial = F.linear(ops.silu_mul(F.linear(x, gate), F.linear(x, up)), self.tp.down[index])
            return self.comm.all_reduce(partial)
        fused = self.decoder.fused[index]
        if fused is None or fused.gate_up is None:
            return ops.mlp(layer.mlp, x)
        gate_up = F.linear(x, fused.gate_up)
        return layer.mlp.down_proj(ops.silu_mul(gate_up[:, : fused.intermediate], gate_up[:, fused.intermediate:]))

    def _logits(self, normed: torch.Tensor) -> None:
        """Final-normed `[1, d]` -> `self.logits` (the sampling rank's; all of them with tensor parallel)."""
        if self.tp is None:
            if self.is_sampler:
                self.logits.copy_(self.modules.lm_head(normed)[0].float())
            return
        local = F.linear(normed, self.tp.lm_head)[0].float()
        padded = torch.full((self.tp.vocab_chunk,), float("-inf"), dtype=torch.float32, device=self.device)
        padded[: local.shape[0]] = local
        gathered, pending = self.comm.all_gather_stacked(padded)
        pending.wait()
        chunks = [gathered[rank, : stop - start]
                  for rank, (start, stop) in enumerate(even_slices(self.tp.vocab_size, self.comm.world_size))]
        self.logits.copy_(torch.cat(chunks))

    def _layers(self) -> None:
        """Every layer for the token in `self.token` at `self.position`; logits into `self.logits`.

        Each residual add runs with the norm after it (`FusedOps.add_norm`): one kernel for both.
        """
        decoder, modules = self.decoder, self.modules
        ops, layers = decoder.ops, modules.layers
        if self.cache.is_owner:
            self.write_index.copy_(self.num_valid)
            self.num_valid.add_(1)
        hidden = decoder.embed(self.token)
        ids = self.position.expand(3, 1) if modules.is_mrope else self.position
        cos, sin = decoder.rope(hidden, ids)
        normed = ops.norm(layers[0].input_layernorm, hidden)
        for index, layer in enumerate(layers):
            q, k, v = self._qkv(index, layer, normed, cos, sin)
            if self.cache.is_owner:
                self.cache.layers[index].write(self.write_index, k, v)
            out = self._attention(index, q)
            hidden, normed = ops.add_norm(layer.post_attention_layernorm, hidden,
                                          layer.self_attn.o_proj(out.reshape(1, -1)))
            next_norm = layers[index + 1].input_layernorm if index + 1 < len(layers) else modules.norm
            hidden, normed = ops.add_norm(next_norm, hidden, self._mlp(index, layer, normed))
        self._logits(normed)
        self.position.add_(1)

    def _sample_and_share(self, is_cancelled: bool) -> None:
        """Sample (sampling rank), add the flags, broadcast; the token becomes the next step's input."""
        if self.is_sampler:
            self.sampler(self.logits, self.payload[:1])
            # one pinned slot per in-flight step: the host rewrites a slot only after reading that
            # step back (`read`), so its asynchronous copy has been done
            flags = self.flags_host[self.num_steps % 2]
            flags[0] = FLAG_CANCEL if is_cancelled else 0
            self.payload[1:].copy_(flags, non_blocking=True)
        self.comm.broadcast(self.payload, self.state.plan.decode_rank)
        self.token.copy_(self.payload[:1])

    # ----- the host's view ----------------------------------------------------------------------

    def launch_first(self, is_cancelled: bool = False) -> None:
        """Step 0: sample the first token from the prefill's last-token logits."""
        if self.is_sampler:
            self.logits.copy_(self.state.logits)
        self._sample_and_share(is_cancelled)
        self._publish()

    def launch_step(self, is_cancelled: bool = False) -> None:
        """Queue the next step: the layers for the last token, then sampling and the broadcast."""
        if self.graph is not None:
            self.graph.replay()
        elif self.use_graph and self.num_steps > self.eager_steps:
            self._capture()
        else:
            self._layers()
        self._sample_and_share(is_cancelled)
        self._publish()

    def _capture(self) -> None:
        """Capture the layers once and replay them. If capturing fails, run this step eagerly (which
        also warms up whatever the capture lacked) and try once more at the next step; after a second
        failure, log it and stay eager."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._layers()
        except Exception as error:  # noqa: BLE001 - a capture problem must not fail the request
            self.num_capture_failures += 1
            self.decoder.has_captured_decode = False  # the next request warms up before capturing
            if self.num_capture_failures > 1:
                logger.warning("capturing the decode step in a CUDA graph failed (%s: %s); decoding eagerly",
                               type(error).__name__, error)
                self.use_graph = False
            self._layers()
            return
        self.graph = graph
        self.decoder.has_captured_decode = True
        graph.replay()

    def _publish(self) -> None:
        slot = self.num_steps % 2
        self.host_tokens[slot].copy_(self.payload, non_blocking=True)
        if self.events[slot] is not None:
            self.events[slot].record()
        self.num_steps += 1

    def read(self, step: int) -> tuple[int, int]:
        """(token, flags) of step `step` (waits for that step only); steps are read in order, each
        before step + 2 is launched."""
        slot = step % 2
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        token, flags = self.host_tokens[slot].tolist()
        return int(token), int(flags)
