"""One model path for every attention method: HF decoder layers run over a rank's token shard.

`ShardedDecoder` takes the modules of a transformers decoder-only language model with the
Llama / Qwen2 layer layout (`input_layernorm`, `self_attn.{q,k,v,o}_proj`, optional `q_norm` /
`k_norm`, `post_attention_layernorm`, `mlp`, a `rotary_emb` at the model level) and runs them on the
local tokens of a `SequencePlan`, calling the chosen `AttentionMethod` for attention. Weights and
numerics are HF's own modules; only the data flow is ours. Prefill keeps the owned K/V in a
`DistributedKVCache`; decode steps run in `spava.models.decode_step` (exact, LSE-merged).

Memory: the MLP runs in token chunks (`mlp_chunk_size`) so a 600K-token shard never materialises
`[S, intermediate]`, and logits are only computed for the rows the caller asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from spava.attention.base import AttentionMethod, AttnContext
from spava.models.fused_ops import FusedOps, is_compile_default
from spava.models.fused_weights import FusedLayer, fuse_layers
from spava.models.kv_cache import DistributedKVCache


@dataclass
class DecoderModules:
    """The pieces of an HF causal LM that the sharded decoder runs."""

    embed_tokens: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    rotary_emb: nn.Module
    lm_head: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    is_mrope: bool  # rotary_emb takes [3, 1, S] position ids (Qwen2-VL family) instead of [1, S]
    # rotary_emb's frequencies depend on the forward's length (dynamic NTK, `spava.models.dynamic_rope`):
    # it also takes `seq_len=`, and the prefill passes the whole prompt's length on every rank
    is_rope_length_dependent: bool = False


class ShardedDecoder:
    """Runs prefill and decode steps of one request on this rank's tokens."""

    def __init__(self, modules: DecoderModules, method: AttentionMethod, mlp_chunk_size: int = 8192,
                 progress: Callable[[int, int], None] | None = None, compile: bool | None = None,
                 fuse_weights: bool = True):
        """`compile`: fuse the elementwise ops with torch.compile (None: on CUDA with Triton).
        `fuse_weights`: store each layer's Q/K/V and gate/up weights side by side, shared with the
        modules (`spava.models.fused_weights`), so a decode step runs one GEMV for each group."""
        self.m = modules
        self.method = method
        self.mlp_chunk_size = mlp_chunk_size
        self.progress = progress
        if compile is None:
            compile = is_compile_default(modules.embed_tokens.weight.device)
        self.ops = FusedOps(bool(compile))
        self.fused: list[FusedLayer | None] = (fuse_layers(modules.layers) if fuse_weights
                                               else [None] * len(modules.layers))
        self.has_captured_decode = False  # a decode step was captured (compiled ops and kernels are warm)

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """`[S]` ids -> `[S, hidden]`."""
        return self.m.embed_tokens(token_ids)

    def rope(self, hidden: torch.Tensor, position_ids: torch.Tensor,
             seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids `[3, S]` (M-RoPE) or `[S]` -> cos, sin `[S, D]`.

        seq_len: length of the whole forward these positions are a shard of (the prompt's, at
        prefill); only length-dependent RoPE uses it, so every rank gets the same frequencies.
        """
        ids = position_ids[:, None, :] if self.m.is_mrope else position_ids[None, :]
        if self.m.is_rope_length_dependent and seq_len is not None:
            cos, sin = self.m.rotary_emb(hidden[None], ids, seq_len=seq_len)
        else:
            cos, sin = self.m.rotary_emb(hidden[None], ids)
        return cos[0], sin[0]

    def _qkv(self, layer, hidden, cos, sin):
        """Normed `[S, d]` -> q `[S, Hq, D]`, k and v `[S, Hkv, D]` through the layer's own projections."""
        attn = layer.self_attn
        return self.rotate_qkv(layer, attn.q_proj(hidden), attn.k_proj(hidden), attn.v_proj(hidden), cos, sin)

    def rotate_qkv(self, layer, q, k, v, cos, sin):
        """Projected q `[S, Hq*D]`, k and v `[S, Hkv*D]` -> heads, Qwen3-style per-head norms where the
        layer has them, RoPE on q and k: q `[S, Hq, D]`, k and v `[S, Hkv, D]`."""
        attn, m = layer.self_attn, self.m
        num_tokens = q.shape[0]
        q = q.view(num_tokens, m.num_heads, m.head_dim)
        k = k.view(num_tokens, m.num_kv_heads, m.head_dim)
        v = v.view(num_tokens, m.num_kv_heads, m.head_dim)
        if hasattr(attn, "q_norm"):  # Qwen3-style per-head RMSNorm before RoPE
            q, k = attn.q_norm(q), attn.k_norm(k)
        return (*self.ops.rope_qk(q, k, cos, sin), v)

    def _mlp_residual_(self, layer, hidden: torch.Tensor) -> None:
        """hidden += mlp(norm(hidden)), in token chunks (bounded [chunk, intermediate] memory)."""
        for start in range(0, hidden.shape[0], self.mlp_chunk_size):
            rows = hidden[start: start + self.mlp_chunk_size]
            rows += self.ops.mlp(layer.mlp, self.ops.norm(layer.post_attention_layernorm, rows))

    def prefill(self, hidden: torch.Tensor, position_ids: torch.Tensor, ctx: AttnContext,
                extra_capacity: int = 256,
                layer_additions: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
                ) -> tuple[torch.Tensor, DistributedKVCache]:
        """Run every layer over the local tokens.

        Args:
            hidden: `[S, hidden]` input embeddings in plan order (modified in place).
            position_ids: `[3, S]` or `[S]` global positions sliced by the plan.
            extra_capacity: cache rows reserved for generated tokens (on the rank that stores them).
            layer_additions: {layer i: (local rows `[n]`, values `[n, hidden]`)}: values added to those
                rows of layer i's output, before layer i+1 (Qwen3-VL's DeepStack visual features).
        Returns:
            (final hidden states `[S, hidden]` before the last norm, KV cache of the owned tokens)
        """
        cos, sin = self.rope(hidden, position_ids, seq_len=ctx.plan.num_tokens)
        owned = ctx.plan.owned_local_ranges()
        cache = DistributedKVCache(is_owner=ctx.plan.rank == ctx.plan.decode_rank, extra_capacity=extra_capacity)
        num_layers = len(self.m.layers)
        for index, layer in enumerate(self.m.layers):
            q, k, v = self._qkv(layer, self.ops.norm(layer.input_layernorm, hidden), cos, sin)
            out = (ctx.method or self.method).forward(q, k, v, ctx, layer_idx=index)
            hidden += layer.self_attn.o_proj(out.reshape(out.shape[0], -1))
            del q, out
            cache.add_layer(torch.cat([k[a:b] for a, b in owned]), torch.cat([v[a:b] for a, b in owned]))
            del k, v
            self._mlp_residual_(layer, hidden)
            if layer_additions and index in layer_additions:
                _add_rows_(hidden, *layer_additions[index])
            if self.progress is not None:
                self.progress(index + 1, num_layers)
        return hidden, cache

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`[T, hidden]` final hidden states -> `[T, vocab]` float32 logits (last norm + lm_head)."""
        return self.m.lm_head(self.ops.norm(self.m.norm, hidden)).float()


def _add_rows_(hidden: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """hidden[rows] += values, rows unique: one addition per element in hidden's dtype, as HF does."""
    if rows.numel():
        hidden.index_copy_(0, rows, hidden.index_select(0, rows) + values.to(hidden.dtype))
