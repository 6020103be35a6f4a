"""The attention methods by name: the table every list of methods reads. Torch-free.

Runs anywhere, torch or not: loading a config checks `prefill.attention.method` against these names
without importing any method. An entry names the method's class as "pkg.module:Class" (imported only
when the method is used) and says whether it is exact; everything else a method knows (its plan
function, default hyper-parameters, layout) lives in its own file, in its class.
`spava.attention.registry` checks, whenever it loads a class, that the class agrees with its entry.

Adding a built-in method: one file under `spava/attention/` and one line in `BUILTIN_METHODS`.
A method of one's own is registered at run time (`spava.attention.registry.register_method`), or
named in the config as "pkg.module:Class" without a name of its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodEntry:
    """One named method.

    Attributes:
        name: the name configs use (`prefill.attention.method`); equals the class's `name`.
        target: "pkg.module:Class" of its `AttentionMethod` subclass.
        is_exact: equals the class's `is_exact` (exact attention on every row, not only the query rows).
    """

    name: str
    target: str
    is_exact: bool


BUILTIN_METHODS: tuple[MethodEntry, ...] = (
    MethodEntry("full", "spava.attention.full:FullAttention", is_exact=True),
    MethodEntry("ring", "spava.attention.ring:RingAttention", is_exact=True),
    MethodEntry("zigzag_ring", "spava.attention.ring:ZigzagRingAttention", is_exact=True),
    MethodEntry("ulysses", "spava.attention.ulysses:UlyssesAttention", is_exact=True),
    MethodEntry("star", "spava.attention.star:StarAttention", is_exact=False),
    MethodEntry("apb", "spava.attention.apb:APBAttention", is_exact=False),
    MethodEntry("spava", "spava.attention.spava:SpavaAttention", is_exact=False),
)

# Methods registered at run time, after the built-ins. The one mutable table of the package, on
# purpose: a plug-in registry (the SGLang pattern). It is per process: a spawned worker sees only
# what its own imports register.
_REGISTERED: dict[str, MethodEntry] = {}


def method_entries() -> tuple[MethodEntry, ...]:
    """Every named method: the built-ins in table order, then the registered ones in order of registration."""
    return (*BUILTIN_METHODS, *_REGISTERED.values())


def find_method(name: str) -> MethodEntry | None:
    """The entry named `name` (None for an unknown name or a "pkg.module:Class" target)."""
    return next((entry for entry in method_entries() if entry.name == name), None)


def available_methods() -> list[str]:
    """Names of every method, built-in then registered."""
    return [entry.name for entry in method_entries()]


def exact_methods() -> list[str]:
    """Names of the exact methods (`is_exact`): full, ring, zigzag_ring, ulysses, and any registered."""
    return [entry.name for entry in method_entries() if entry.is_exact]


def approximate_methods() -> list[str]:
    """Names of the approximate methods (exact query rows only): star, apb, spava, and any registered."""
    return [entry.name for entry in method_entries() if not entry.is_exact]


def add_entry(entry: MethodEntry) -> None:
    """Register `entry` (use `spava.attention.registry.register_method`, which builds it from the class)."""
    if not entry.name or ":" in entry.name:
        raise ValueError(f"attention method name {entry.name!r} must be non-empty and contain no ':'")
    existing = find_method(entry.name)
    if existing is not None and existing != entry:
        raise ValueError(f"attention method {entry.name!r} is already registered as {existing.target}; "
                         "choose another name or unregister it first")
    _REGISTERED[entry.name] = entry


def remove_entry(name: str) -> None:
    """Forget a method registered at run time; the built-ins stay."""
    if any(entry.name == name for entry in BUILTIN_METHODS):
        raise ValueError(f"attention method {name!r} is built in and cannot be unregistered")
    if _REGISTERED.pop(name, None) is None:
        raise ValueError(f"attention method {name!r} is not registered")
