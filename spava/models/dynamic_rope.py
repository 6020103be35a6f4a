"""Dynamic NTK RoPE (HF's `rope_type: dynamic`) as a stateless module, for sharded prefill and decode.

HF's rotary module rescales its frequencies from the largest position of each forward call and
keeps the result between calls (`dynamic_rope_update`). Run on one rank's shard of a prompt, the
same module would give every rank different frequencies (each sees only its own positions), and
its memory of earlier requests would leak into later ones. `DynamicNTKRotary` instead derives the
frequencies at every call from `max(seq_len, largest position + 1)`: the prefill passes the whole
prompt's length, a decode step's own position gives its length. That is what HF's `generate` uses
for one request on a freshly loaded model: the original frequencies while the length stays within
`max_position_embeddings`, else NTK-scaled ones for the prompt length N at prefill and for p + 1 at
the decode step of position p. Only tensor ops (no host sync), so a decode step can be captured in
a CUDA graph. Runs wherever the decoder runs; `dynamic_rotary(rotary_emb)` wraps an HF module when
its config asks for dynamic scaling.
"""

from __future__ import annotations

import torch
from torch import nn

LENGTH_DEPENDENT_TYPES = ("longrope",)  # refused: their frequencies depend on the length in other ways


class DynamicNTKRotary(nn.Module):
    """cos, sin `[B, S, D]` for position ids `[B, S]`, like HF's dynamic rotary on a fresh model.

    Args:
        rotary: the HF rotary module (its config and original frequencies are read, never changed).
    """

    def __init__(self, rotary: nn.Module):
        super().__init__()
        config = rotary.config
        params = config.rope_parameters
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
        self.base, self.factor = params["rope_theta"], params["factor"]
        self.max_positions = int(config.max_position_embeddings)
        self.attention_scaling = rotary.attention_scaling
        device = rotary.original_inv_freq.device
        # the exponents exactly as HF computes them: int64 arange -> float32, divided by dim
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / self.dim
        self.register_buffer("exponents", exponents, persistent=False)
        self.register_buffer("original_inv_freq", rotary.original_inv_freq.detach().clone(), persistent=False)

    def inv_freq(self, length: torch.Tensor) -> torch.Tensor:
        """`[D/2]` float32 frequencies for a forward of `length` positions (0-d int64 tensor).

        Same float32 operations, in the same order, as HF's `_compute_dynamic_ntk_parameters` with
        a tensor length, so the frequencies are bit-identical to HF's.
        """
        scaled_length = torch.clamp(length, min=self.max_positions)
        base = self.base * ((self.factor * scaled_length / self.max_positions) - (self.factor - 1)) ** (
            self.dim / (self.dim - 2))
        scaled = 1.0 / (base ** self.exponents)
        return torch.where(length > self.max_positions, scaled, self.original_inv_freq)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor,
                seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x `[B, S, d]` (for device and dtype), position_ids `[B, S]`; `seq_len`: the length of the
        whole forward when these positions are only a shard of it (the prompt length at prefill)."""
        length = position_ids.max() + 1
        if seq_len is not None:
            length = torch.clamp(length, min=seq_len)
        inv_freq = self.inv_freq(length)
        inv = inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(x.device)
        positions = position_ids[:, None, :].float()
        with torch.autocast(device_type=x.device.type, enabled=False):  # frequencies in float32, as HF
            freqs = (inv.float() @ positions.float()).transpose(1, 2)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = emb.cos() * self.attention_scaling
            sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def dynamic_rotary(rotary: nn.Module) -> tuple[nn.Module, bool]:
    """(rotary module to run, whether it takes `seq_len=`): HF's own module, or `DynamicNTKRotary`
    around it when its config uses dynamic NTK scaling. Raises ValueError for other length-dependent
    RoPE types, which the sharded decoder would get wrong."""
    rope_type = getattr(rotary, "rope_type", "default")
    if isinstance(rope_type, str) and "dynamic" in rope_type:
        return DynamicNTKRotary(rotary), True
    if rope_type in LENGTH_DEPENDENT_TYPES:
        raise ValueError(f"rope_type {rope_type!r} changes its frequencies with the sequence length in a way "
                         "the sharded decoder does not reproduce; use a checkpoint with default, linear, yarn "
                         "or dynamic RoPE")
    return rotary, False
