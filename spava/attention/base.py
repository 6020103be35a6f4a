"""The contract every sequence-parallel attention method implements.

One model path calls `method.forward(q, k, v, ctx, layer_idx)` in every decoder layer with the
rank's local tokens in the order of `method.plan(...)`; the method returns the attention output for
exactly those rows. Decoding over the distributed KV cache is shared by all methods
(`spava.attention.exact.decode_attention`), because every plan leaves each prompt token's K/V on
exactly one rank (`SequencePlan.owned`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from spava.attention.backend import AttentionBackend, get_backend
from spava.attention.config import AttentionConfig
from spava.attention.selection_log import SelectionLog
from spava.comm.collectives import SPComm
from spava.plan.sequence import SequencePlan


@dataclass(frozen=True)
class AttnContext:
    """Per-request, per-rank state an attention call needs (built once, used by every layer)."""

    plan: SequencePlan
    comm: SPComm
    backend: AttentionBackend
    peer_plans: tuple[SequencePlan, ...]  # every rank's plan of the same request, by rank
    scale: float | None = None
    method: "AttentionMethod | None" = None  # the method that made this context (runs every layer)
    selections: SelectionLog | None = None  # when set, approximate methods record their passing choices


class AttentionMethod(ABC):
    """A named sequence-parallel attention method: everything spava knows about it is here.

    Subclasses set the flags `name`, `is_exact` (exact attention on every row; approximate methods
    are exact on the query rows only) and `layout` (where rank r's tokens come from, in words), the
    default hyper-parameters they need (`default_passing_ratio`), and implement `plan` (a pure
    layout function, `plan_<method>` in the method's file) and `forward`. A named method also has
    one line in `spava.attention.methods.BUILTIN_METHODS` (or is registered at run time).
    """

    name: ClassVar[str]
    is_exact: ClassVar[bool]
    layout: ClassVar[str] = ""
    default_passing_ratio: ClassVar[float | None] = None  # passing budget as a fraction of L, when it passes

    def __init__(self, config: AttentionConfig | None = None):
        self.config = self.with_defaults(config if config is not None else AttentionConfig(method=self.name))

    @classmethod
    def with_defaults(cls, config: AttentionConfig) -> AttentionConfig:
        """A copy of `config` with this method's defaults in the fields the user left unset (None)."""
        if config.passing_ratio is None and cls.default_passing_ratio is not None:
            return replace(config, passing_ratio=cls.default_passing_ratio)
        return replace(config)

    @abstractmethod
    def plan(self, num_tokens: int, num_query_tokens: int, world_size: int, rank: int) -> SequencePlan:
        """This rank's share of a request of `num_tokens` tokens whose last `num_query_tokens` are the query."""

    @abstractmethod
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttnContext, layer_idx: int = 0
    ) -> torch.Tensor:
        """Attention for the local rows.

        Args:
            q: `[S, Hq, D]` local queries (after RoPE) in plan order; k, v: `[S, Hkv, D]`.
        Returns:
            `[S, Hq, D]` in q.dtype.
        """

    def context(self, plan: SequencePlan, comm: SPComm, device: torch.device | str | None = None) -> AttnContext:
        if plan.world_size != comm.world_size:
            raise ValueError(f"plan is for {plan.world_size} ranks but the group has {comm.world_size}")
        peers = tuple(
            self.plan(plan.num_tokens, plan.num_query_tokens, plan.world_size, rank)
            for rank in range(plan.world_size)
        )
        return AttnContext(plan=plan, comm=comm, backend=get_backend(self.config.backend, device), peer_plans=peers,
                           method=self)
