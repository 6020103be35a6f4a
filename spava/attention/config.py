"""Attention method configuration: the method name and its hyperparameters (paper defaults).

A plain dataclass so it can serve as an omegaconf structured config node (`prefill.attention`).
Sizes that depend on the request (anchor A, passing budget P) are resolved here from the context
length L, once per request, by pure functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from spava.plan.sequence import ceil_to


@dataclass
class AttentionConfig:
    """Which sequence-parallel attention to run, and its knobs.

    Attributes:
        method: a name of `spava.attention.methods` (full | ring | zigzag_ring | ulysses | star | apb |
            spava, or one registered at run time), or "pkg.module:Class".
        backend: attention kernel: auto | flash_attn | torch_cuda | torch_cpu | math.
        anchor_ratio: anchor length as a fraction of L (A = round_to-rounded floor(L * ratio)).
        anchor_len: absolute anchor length; overrides anchor_ratio.
        passing_ratio: passing budget per chunk and KV head as a fraction of L (None: the method's
            `default_passing_ratio`, filled in when the method is built: 1/128 for spava, 1/64 for apb).
        passing_len: absolute passing budget; overrides passing_ratio.
        pool_window: max-pool window smoothing the selection scores (odd, >= 1).
        round_to: A, P and the per-chunk selection are multiples of this (128 in the paper; 1 = off).
        passing_schedule: optional per-layer multipliers of the passing budget (len = num layers).
        scorer: how passing tokens are chosen: query_aware | key_norm | "pkg.module:function".
    """

    method: str = "spava"
    backend: str = "auto"
    anchor_ratio: float = 1 / 64
    anchor_len: Optional[int] = None
    passing_ratio: Optional[float] = None
    passing_len: Optional[int] = None
    pool_window: int = 5
    round_to: int = 128
    passing_schedule: Optional[list[float]] = None
    scorer: str = "query_aware"

    def __post_init__(self) -> None:
        if not 0.0 <= self.anchor_ratio < 1.0:
            raise ValueError(f"prefill.attention.anchor_ratio must lie in [0, 1), got {self.anchor_ratio}")
        if self.anchor_len is not None and self.anchor_len < 0:
            raise ValueError(f"prefill.attention.anchor_len must be >= 0, got {self.anchor_len}")
        if self.passing_ratio is not None and not 0.0 <= self.passing_ratio <= 1.0:
            raise ValueError(f"prefill.attention.passing_ratio must lie in [0, 1], got {self.passing_ratio}")
        if self.passing_len is not None and self.passing_len < 0:
            raise ValueError(f"prefill.attention.passing_len must be >= 0, got {self.passing_len}")
        if self.pool_window < 1 or self.pool_window % 2 == 0:
            raise ValueError(f"prefill.attention.pool_window must be odd and >= 1, got {self.pool_window}")
        if self.round_to < 1:
            raise ValueError(f"prefill.attention.round_to must be >= 1, got {self.round_to}")
        if self.passing_schedule is not None and any(m < 0 for m in self.passing_schedule):
            raise ValueError("prefill.attention.passing_schedule multipliers must be >= 0")


def resolve_anchor_len(config: AttentionConfig, context_len: int) -> int:
    """Anchor length A for a context of L tokens: anchor_len, else ceil_to(floor(L * ratio), round_to)."""
    if config.anchor_len is not None:
        return config.anchor_len
    return ceil_to(math.floor(context_len * config.anchor_ratio + 1e-9), config.round_to)


def resolve_passing_len(config: AttentionConfig, context_len: int, layer_idx: int = 0) -> int:
    """Passing budget P per chunk and KV head at `layer_idx` (before capping at the chunk size).

    `config` is a method's own (`method.config`), which holds the method's default passing ratio
    when the user set none."""
    if config.passing_len is not None:
        base = config.passing_len
    elif config.passing_ratio is not None:
        base = ceil_to(math.floor(context_len * config.passing_ratio + 1e-9), config.round_to)
    else:
        raise ValueError(
            f"attention method {config.method!r} has no passing budget: set prefill.attention.passing_ratio or "
            "passing_len, or resolve the method's default first (get_method(config).config)"
        )
    schedule = config.passing_schedule
    if schedule is None:
        return base
    if layer_idx >= len(schedule):
        raise ValueError(
            f"prefill.attention.passing_schedule has {len(schedule)} entries but layer {layer_idx} was run; "
            "give one multiplier per decoder layer"
        )
    return ceil_to(math.floor(base * schedule[layer_idx] + 1e-9), config.round_to)


def num_selected(passing_len: int, selectable_len: int, round_to: int) -> int:
    """Tokens one chunk passes per KV head: min(P, round_to * floor(chunk / round_to))."""
    return min(passing_len, selectable_len // round_to * round_to)
