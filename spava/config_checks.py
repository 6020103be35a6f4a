"""Checks of config values that need another module's knowledge: device names, the attention
registries' names (the methods from the torch-free table `spava.attention.methods`), and the
sampling and frame-sampling parameters a config section (or a request's overrides of it) makes.
Used by `spava.config` at load and by the scheduler at admission; torch-free.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
import sys

from spava.attention.methods import available_methods, exact_methods, find_method

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_devices(name: str, devices: list[str]) -> None:
    for device in devices:
        if not _DEVICE.match(device):
            raise ValueError(f"{name}: device {device!r} must be 'cpu', 'cuda' or 'cuda:N'")


def _registry_keys(module_name: str, table: str) -> list[str]:
    """The keys of the dict `table` of `module_name`: read from the module when it is imported,
    else from its source, so that loading a config never imports torch (the attention registry
    imports it at module level). Built-in names only; "pkg.module:name" targets are loaded."""
    module = sys.modules.get(module_name)
    if module is not None:
        return list(getattr(module, table))
    return _table_keys_from_source(module_name, table)


def _table_keys_from_source(module_name: str, table: str) -> list[str]:
    origin = importlib.util.find_spec(module_name).origin
    with open(origin) as handle:
        tree = ast.parse(handle.read())
    for node in tree.body:
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(isinstance(t, ast.Name) and t.id == table for t in targets) and isinstance(node.value, ast.Dict):
            return [ast.literal_eval(key) for key in node.value.keys]
    raise RuntimeError(f"{module_name}.{table} not found")


def check_attention(attention) -> None:
    """prefill.attention: the method, kernel backend and scorer are ones the registries know."""
    methods = available_methods()  # the torch-free table of named methods, run-time registrations included
    if attention.method not in methods:
        if ":" not in attention.method:
            raise ValueError(f"prefill.attention.method: unknown method {attention.method!r}; choose one of "
                             f"{', '.join(methods)} or give 'pkg.module:Class'")
        from spava.attention.registry import get_method

        get_method(attention)  # imports the class and checks it is an AttentionMethod
    backends = ["auto", *_registry_keys("spava.attention.backend", "_KERNELS")]
    if attention.backend not in backends:
        raise ValueError(f"prefill.attention.backend: unknown backend {attention.backend!r}; choose one of "
                         f"{', '.join(backends)}")
    scorers = _registry_keys("spava.attention.scoring", "_BUILTIN_SCORERS")
    if attention.scorer not in scorers:
        from spava.objects import load_object

        if ":" not in attention.scorer:
            raise ValueError(f"prefill.attention.scorer: unknown scorer {attention.scorer!r}; choose one of "
                             f"{', '.join(scorers)} or give 'pkg.module:function'")
        load_object(attention.scorer, "prefill.attention.scorer")


def check_short_input_method(name: str) -> None:
    """prefill.short_input_method: an exact method. Named methods are checked from the table (no torch);
    a "pkg.module:Class" target is loaded and its class asked."""
    entry = find_method(name)
    if entry is None:
        from spava.attention.registry import method_class

        if ":" not in name:
            raise ValueError(f"prefill.short_input_method: unknown method {name!r}; choose one of "
                             f"{', '.join(exact_methods())} or give 'pkg.module:Class'")
        is_exact = method_class(name).is_exact
    else:
        is_exact = entry.is_exact
    if not is_exact:
        raise ValueError(f"prefill.short_input_method must be an exact method ({', '.join(exact_methods())}), "
                         f"got {name!r}")


def frame_sampling(options: dict):
    """The `FrameSampling` of resolved video.* options (its fields only); ValueError naming the field."""
    from spava.media.sampling import FrameSampling

    names = {f.name for f in dataclasses.fields(FrameSampling)}
    return FrameSampling(**{key: value for key, value in options.items() if key in names})


def sampling_params(decode, overrides: dict):
    """decode.* defaults updated by a request's sampling overrides, as a `SamplingParams` (torch-free);
    ValueError naming the option. `decode.max_allowed_new_tokens` bounds max_new_tokens."""
    from spava.models.generation import SamplingParams

    names = {f.name for f in dataclasses.fields(SamplingParams)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown sampling option(s) {sorted(unknown)}; valid: {sorted(names)}")
    values = {f.name: getattr(decode, f.name) for f in dataclasses.fields(decode) if f.name in names}
    values.update(overrides)
    for key in ("stop_token_ids", "stop_strings"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    try:
        params = SamplingParams(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"sampling: {error}") from None
    limit = decode.max_allowed_new_tokens
    if isinstance(params.max_new_tokens, int) and params.max_new_tokens > limit:
        raise ValueError(f"max_new_tokens={params.max_new_tokens} is over decode.max_allowed_new_tokens={limit}; "
                         "ask for fewer tokens or raise decode.max_allowed_new_tokens")
    return params
