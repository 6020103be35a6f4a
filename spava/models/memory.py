"""GPU memory a prefill needs on one rank, checked before the decoder layers allocate it.

A request whose KV cache and layer activations cannot fit is refused with a message that says how
much it needs and what to change, instead of dying in an out-of-memory error halfway through the
layers (on W > 1 ranks, one rank's OOM would leave the others waiting in a collective).

The estimate counts what the sharded decoder (`spava.models.decoder`) holds at its peak:
- the KV cache of the owned tokens plus the rows reserved for generation, every layer:
  `L * 2 * (S_owned + extra) * Hkv * D` elements;
- cos and sin of RoPE over the S local tokens, `[S, D]` each;
- the largest of one layer's phases over the S local tokens (each phase's tensors are freed before
  the next starts):
  * Q/K/V and RoPE: the normalised input `[S, d]`, q `[S, H, D]`, k and v `[S, Hkv, D]`, rotated q
    and k; eager RoPE (not compiled) also holds two more `[S, H, D]` temporaries (rotate-half);
  * attention and output projection: rotated q, the attention output and o_proj's output, k and v,
    and the owned K/V rows copied into the cache (`[S_owned, Hkv, D]` twice);
  * the MLP of one token chunk: the normalised chunk and its output `[chunk, d]`, gate, up and their
    product `[chunk, I]` (eager SwiGLU one more `[chunk, I]`, silu(gate)).
The hidden states `[S, d]` already exist when the check runs (they hold the embeddings), so they are
counted as allocated, not needed. Attention kernels' own workspaces (a few MB) are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024 ** 3


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a decoder that set its prefill memory."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int


@dataclass(frozen=True)
class PrefillMemory:
    """Bytes one rank's prefill allocates beyond what it holds when the check runs."""

    kv_cache_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.kv_cache_bytes + self.activation_bytes


class OverBudgetError(ValueError):
    """The request does not fit this rank's GPU memory; the message says what to change."""


def estimate_prefill_memory(shape: DecoderShape, num_local_tokens: int, num_owned_tokens: int,
                            extra_capacity: int, mlp_chunk_size: int, is_compiled: bool = False) -> PrefillMemory:
    """Peak bytes of one rank's prefill over `num_local_tokens` tokens (S), of which it keeps
    `num_owned_tokens` in its KV cache (S_owned), with `extra_capacity` rows for generation;
    `is_compiled`: the elementwise ops are fused (`FusedOps`), which drops their temporaries."""
    kv_row = shape.num_kv_heads * shape.head_dim
    q_row = shape.num_heads * shape.head_dim
    num_tokens, width = num_local_tokens, shape.hidden_size
    kv_cache = shape.num_layers * 2 * (num_owned_tokens + extra_capacity) * kv_row
    rope_temporaries = 0 if is_compiled else 2 * q_row
    projections = num_tokens * (width + 2 * q_row + 3 * kv_row + rope_temporaries)
    attention = num_tokens * (2 * q_row + width + 2 * kv_row) + 2 * num_owned_tokens * kv_row
    chunk = min(mlp_chunk_size, num_tokens)
    mlp = chunk * ((3 if is_compiled else 4) * shape.intermediate_size + 2 * width)
    cos_sin = 2 * num_tokens * shape.head_dim
    return PrefillMemory(kv_cache * shape.dtype_bytes,
                         (max(projections, attention, mlp) + cos_sin) * shape.dtype_bytes)


def check_fits(need: PrefillMemory, free_bytes: int, *, rank: int, world_size: int, num_tokens: int) -> str | None:
    """None if `need` fits in `free_bytes`, else the refusal message (what it needs and what to change)."""
    if need.total_bytes <= free_bytes:
        return None
    more_ranks = ("; or run the prefill on more GPUs (prefill.world_size), which splits the tokens and the KV "
                  "cache across them" if world_size < 8 else "")
    return (f"the prompt's {num_tokens} tokens need about {need.total_bytes / GIB:.1f} GiB on model rank {rank} "
            f"(KV cache {need.kv_cache_bytes / GIB:.1f} GiB, layer activations {need.activation_bytes / GIB:.1f} "
            f"GiB) and {free_bytes / GIB:.1f} GiB are free; lower video.max_frames, video.fps or video.max_pixels "
            f"(fewer visual tokens), or prefill.mlp_chunk_size (smaller activations){more_ranks}")
