"""Sampling parameters: how generated tokens are picked (on the device: `spava.models.decode_step`) and
when generation stops."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class SamplingParams:
    """How to pick generated tokens and when to stop.

    temperature 0 means greedy. top_k 0 and top_p 1.0 disable those filters. `seed` makes sampling
    reproducible (one device generator per request, on the rank that samples).
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")



def sampling_params(defaults: object, overrides: dict) -> SamplingParams:
    """`defaults` (an object with some of `SamplingParams`' field names as attributes, e.g. the decode
    config section) updated by a request's `overrides`; lists become tuples. ValueError naming the
    option when one is unknown or has a bad value."""
    names = [f.name for f in fields(SamplingParams)]
    unknown = set(overrides) - set(names)
    if unknown:
        raise ValueError(f"unknown sampling option(s) {sorted(unknown)}; valid: {sorted(names)}")
    values = {name: getattr(defaults, name) for name in names if hasattr(defaults, name)}
    values.update(overrides)
    for key in ("stop_token_ids", "stop_strings"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    try:
        return SamplingParams(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"sampling: {error}") from None
