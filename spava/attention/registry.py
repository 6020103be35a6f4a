"""Attention methods by name. Imports are lazy: naming a method imports only its module.

Users pick a method in YAML (`prefill.attention.method: spava`) or pass "pkg.module:Class" for a
class of their own that subclasses `AttentionMethod`.
"""

from __future__ import annotations

from dataclasses import replace

from spava.objects import load_object
from spava.attention.base import AttentionMethod
from spava.attention.config import AttentionConfig

BUILTIN_METHODS = {
    "full": "spava.attention.full:FullAttention",
    "ring": "spava.attention.ring:RingAttention",
    "zigzag_ring": "spava.attention.ring:ZigzagRingAttention",
    "ulysses": "spava.attention.ulysses:UlyssesAttention",
    "star": "spava.attention.star:StarAttention",
    "apb": "spava.attention.apb:APBAttention",
    "spava": "spava.attention.spava:SpavaAttention",
}


def available_methods() -> list[str]:
    return list(BUILTIN_METHODS)


def _load(target: str) -> type:
    if ":" not in target:
        raise ValueError(f"unknown attention method {target!r}: use a built-in name ({', '.join(BUILTIN_METHODS)}) "
                         "or 'pkg.module:Class'")
    return load_object(target, "prefill.attention.method")


def get_method(config: AttentionConfig | str) -> AttentionMethod:
    """Instantiate the method named by `config.method` (or by the string itself)."""
    if isinstance(config, str):
        config = AttentionConfig(method=config)
    target = BUILTIN_METHODS.get(config.method, config.method)
    if ":" not in target:
        raise ValueError(
            f"unknown attention method {config.method!r}; choose one of {', '.join(BUILTIN_METHODS)} "
            "or give 'pkg.module:Class'"
        )
    cls = _load(target)
    if not (isinstance(cls, type) and issubclass(cls, AttentionMethod)):
        raise ValueError(f"{target} is not a subclass of spava.attention.base.AttentionMethod")
    return cls(replace(config))


class ShortInputRule:
    """Below `min_tokens_per_rank` prompt tokens per rank, an approximate method gives way to an
    exact one (`method`): there its fixed per-layer work (selection gathers, small kernels) costs
    more than the attention it saves, and exact attention is cheap. A pure function of the prompt
    length and the world size, so every rank (prefill and encoder) chooses the same method.
    """

    def __init__(self, min_tokens_per_rank: int, method: AttentionMethod):
        if not method.is_exact:
            raise ValueError(f"prefill.short_input_method must be an exact method, got {method.name!r}")
        self.min_tokens_per_rank = min_tokens_per_rank
        self.method = method

    def choose(self, method: AttentionMethod, num_tokens: int, world_size: int) -> AttentionMethod:
        """`method`, or the exact one for a short prompt on several ranks."""
        if method.is_exact or world_size == 1 or num_tokens >= self.min_tokens_per_rank * world_size:
            return method
        return self.method

    @classmethod
    def from_config(cls, prefill_config) -> "ShortInputRule | None":
        """The rule of the `prefill` section (None when `min_tokens_per_rank` is 0)."""
        if prefill_config.min_tokens_per_rank <= 0:
            return None
        exact = get_method(replace(prefill_config.attention, method=prefill_config.short_input_method))
        return cls(prefill_config.min_tokens_per_rank, exact)
