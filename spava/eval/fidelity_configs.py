"""The attention configurations the fidelity benchmark compares, and how sparse each one is.

Pure configuration (no model, no ranks); each method's defaults and exactness come from its class
(`spava.attention.registry`).

Sparse regime: at the benchmarked 148,539-token prompt (Qwen2.5-VL-7B, 1440p, 64 frames, W = 4,
BENCHMARKS.md) the defaults give spava A = 2432, P = 1280 (round_to 128); context rows then keep
about 21% of their causal (query, key) pairs and each chunk passes 7% of its tokens. At a few
thousand tokens the same defaults round A and P up to 128, which keeps 40-65% of the pairs. The
sparse regime therefore states A and P as the reference's fractions of L with round_to 1, so every
prompt length keeps the reference's fractions (`kept_fractions` computes them exactly).

Named configurations (`CONFIGS`): label -> (method, AttentionConfig overrides, W). Controls change
one thing of sparse spava: which tokens pass (random, the least relevant), or what is kept (no
passing, no anchor, neither). Scorers are loaded by name like any user scorer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spava.attention.config import AttentionConfig, num_selected, resolve_anchor_len, resolve_passing_len
from spava.attention.registry import method_class

REFERENCE_NUM_TOKENS, REFERENCE_NUM_QUERY_TOKENS, REFERENCE_WORLD_SIZE = 148_539, 11, 4
RANDOM_SCORER = "spava.eval.control_scorers:random_scores"
INVERTED_SCORER = "spava.eval.control_scorers:inverted_scores"


@dataclass(frozen=True)
class NamedConfig:
    """One row of the comparison: `method` with `overrides` on `world_size` ranks."""

    label: str
    method: str
    overrides: dict = field(default_factory=dict)
    world_size: int = 4

    def attention_config(self, backend: str = "auto") -> AttentionConfig:
        return AttentionConfig(method=self.method, backend=backend, **self.overrides)


def sparse_overrides(method: str) -> dict:
    """AttentionConfig overrides that keep the 148K reference's anchor and passing fractions of L."""
    context_len = REFERENCE_NUM_TOKENS - REFERENCE_NUM_QUERY_TOKENS
    default = method_class(method).with_defaults(AttentionConfig(method=method))
    anchor = resolve_anchor_len(default, context_len)
    passing = resolve_passing_len(default, context_len)
    return {"anchor_ratio": anchor / context_len, "passing_ratio": passing / context_len, "round_to": 1}


def default_configs(world_size: int = 4) -> list[NamedConfig]:
    """full, every approximate method sparse and at its defaults, and the spava controls."""
    sparse = sparse_overrides("spava")
    return [
        NamedConfig("full", "full", {}, 1),
        NamedConfig("spava", "spava", sparse, world_size),
        NamedConfig("apb", "apb", sparse_overrides("apb"), world_size),
        NamedConfig("star", "star", {}, world_size),
        NamedConfig("spava random", "spava", {**sparse, "scorer": RANDOM_SCORER}, world_size),
        NamedConfig("spava inverted", "spava", {**sparse, "scorer": INVERTED_SCORER}, world_size),
        NamedConfig("spava no passing", "spava", {**sparse, "passing_ratio": 0.0}, world_size),
        NamedConfig("spava no anchor", "spava", {**sparse, "anchor_ratio": 0.0}, world_size),
        NamedConfig("spava no anchor, no passing", "spava", {**sparse, "anchor_ratio": 0.0, "passing_ratio": 0.0},
                    world_size),
        NamedConfig("spava defaults", "spava", {}, world_size),
        NamedConfig("apb defaults", "apb", {}, world_size),
    ]


def describe(config: NamedConfig) -> str:
    """The overrides of a configuration in a few words ("defaults" when there are none)."""
    parts = []
    for key, value in config.overrides.items():
        if key == "scorer":
            value = value.rsplit(":", 1)[-1]
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts) or "defaults"


CONTROL_LABELS = ("spava random", "spava inverted", "spava no passing", "spava no anchor",
                  "spava no anchor, no passing")


def _split(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    base, extra = divmod(stop - start, parts)
    bounds, cursor = [], start
    for part in range(parts):
        bounds.append((cursor, cursor + base + (part < extra)))
        cursor = bounds[-1][1]
    return bounds


def kept_fractions(config: AttentionConfig, num_tokens: int, num_query_tokens: int, world_size: int) -> dict:
    """How much of causal attention the context rows keep, from the method's sizes.

    Returns a dict: `pairs` (kept / causal (query, key) pairs over all context rows), `passed`
    (mean over the chunks whose selection is used of selected / selectable tokens), `anchor`
    (A / L), and the sizes `anchor_len`, `passing_len`, `chunk_len` ([min, max]).
    """
    context_len = num_tokens - num_query_tokens
    method = config.method
    causal = context_len * (context_len + 1) // 2
    cls = method_class(method)
    if cls.is_exact:
        return {"pairs": 1.0, "passed": None, "anchor": 0.0, "anchor_len": 0, "passing_len": None,
                "chunk_len": [context_len, context_len]}
    if method not in ("star", "apb", "spava"):
        raise ValueError(f"kept_fractions knows the layouts of star, apb and spava, not of {method!r}")
    config = cls.with_defaults(config)
    if method == "star":
        chunks, selectable = _split(0, context_len, world_size), []
        anchor = chunks[0][1] if world_size > 1 else 0
    else:
        anchor = resolve_anchor_len(config, context_len)
        if method == "spava":
            chunks = _split(anchor, context_len, 2 * world_size)
            selectable = [b - a for a, b in chunks]
        else:
            chunks = _split(0, context_len, world_size)
            selectable = [chunks[0][1] - anchor] + [b - a for a, b in chunks[1:]]
    passing = resolve_passing_len(config, context_len) if method != "star" else 0
    counts = [num_selected(passing, n, config.round_to) for n in selectable] if method != "star" else []
    kept = anchor * (anchor + 1) // 2 if method == "spava" else 0
    for index, (start, stop) in enumerate(chunks):
        length = stop - start
        if index == 0 and method != "spava":  # the first chunk (holding the anchor) is exact
            kept += length * (length + 1) // 2
            continue
        earlier = anchor + sum(counts[:index])
        kept += length * earlier + length * (length + 1) // 2
    used = [c / n for c, n in zip(counts[:-1], selectable[:-1]) if n > 0]  # the last chunk's selection is unused
    return {"pairs": kept / causal, "passed": sum(used) / len(used) if used else None,
            "anchor": anchor / context_len, "anchor_len": anchor, "passing_len": passing if method != "star" else None,
            "chunk_len": [min(b - a for a, b in chunks), max(b - a for a, b in chunks)]}


def reference_fractions(method: str, overrides: dict | None = None) -> dict:
    """`kept_fractions` of `method` at the 148K reference prompt (defaults unless `overrides`)."""
    config = AttentionConfig(method=method, **(overrides or {}))
    return kept_fractions(config, REFERENCE_NUM_TOKENS, REFERENCE_NUM_QUERY_TOKENS, REFERENCE_WORLD_SIZE)
