"""Attention methods by name: instantiate one, register one, and the short-input rule.

The names and their classes are the torch-free table `spava.attention.methods`; this module loads a
class only when its method is used, and checks that the class agrees with its entry. Users pick a
method in YAML (`prefill.attention.method: spava`), register a class of their own under a name
(`register_method`), or pass "pkg.module:Class" for a class that subclasses `AttentionMethod`.
"""

from __future__ import annotations

from dataclasses import replace

from spava.attention.base import AttentionMethod
from spava.attention.config import AttentionConfig
from spava.attention.methods import (MethodEntry, add_entry, approximate_methods, available_methods, exact_methods,
                                     find_method, remove_entry)
from spava.objects import load_object

__all__ = ["ShortInputRule", "approximate_methods", "available_methods", "exact_methods", "get_method",
           "method_class", "register_method", "unregister_method"]


def method_class(method: str) -> type[AttentionMethod]:
    """The `AttentionMethod` subclass of a method name or of a "pkg.module:Class" target."""
    entry = find_method(method)
    target = entry.target if entry is not None else method
    if ":" not in target:
        raise ValueError(f"unknown attention method {method!r}; choose one of {', '.join(available_methods())} "
                         "or give 'pkg.module:Class'")
    cls = load_object(target, "prefill.attention.method")
    if not (isinstance(cls, type) and issubclass(cls, AttentionMethod)):
        raise ValueError(f"{target} is not a subclass of spava.attention.base.AttentionMethod")
    if entry is not None and (cls.name, cls.is_exact) != (entry.name, entry.is_exact):
        raise RuntimeError(f"attention method {method!r}: the table says name={entry.name!r}, is_exact={entry.is_exact} "
                           f"but {target} says name={cls.name!r}, is_exact={cls.is_exact}; make them agree")
    return cls


def get_method(config: AttentionConfig | str) -> AttentionMethod:
    """Instantiate the method named by `config.method` (or by the string itself), its defaults applied."""
    if isinstance(config, str):
        config = AttentionConfig(method=config)
    return method_class(config.method)(config)


def register_method(cls: type[AttentionMethod]) -> type[AttentionMethod]:
    """Make `cls` a named method (`cls.name`), listed with the built-ins by every list of methods.

    Usable as a class decorator. The class must be importable by its module and name, so that it
    can be loaded again by name. Registration is per process: a worker process started by spawn
    must register it again (import the module that registers it), or name it "pkg.module:Class".
    """
    if not (isinstance(cls, type) and issubclass(cls, AttentionMethod)):
        raise ValueError(f"{cls!r} is not a subclass of spava.attention.base.AttentionMethod")
    add_entry(MethodEntry(cls.name, f"{cls.__module__}:{cls.__qualname__}", cls.is_exact))
    return cls


def unregister_method(name: str) -> None:
    """Forget a method registered with `register_method`."""
    remove_entry(name)


class ShortInputRule:
    """Below `min_tokens_per_rank` prompt tokens per rank, an approximate method gives way to an
    exact one (`method`): there its fixed per-layer work (selection gathers, small kernels) costs
    more than the attention it saves, and exact attention is cheap. A pure function of the prompt
    length and the world size, so every rank (prefill and encoder) chooses the same method.
    """

    def __init__(self, min_tokens_per_rank: int, method: AttentionMethod):
        if not method.is_exact:
            raise ValueError(f"prefill.short_input_method must be an exact method ({', '.join(exact_methods())}), "
                             f"got {method.name!r}")
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
