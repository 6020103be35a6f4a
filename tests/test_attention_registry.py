"""A method added at run time goes through every registry-driven path like a built-in one.

The toy method is the example of docs/design.md ("Adding a method"), run verbatim: a ring attention
over a cyclic layout, registered under its name. Checked: the lists of methods, the config checks
(method and short-input method), its plans, and its forward on gloo ranks against dense float64
attention; and that the registry refuses what it must.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

from spava.attention import methods
from spava.attention.backend import get_backend
from spava.attention.config import AttentionConfig
from spava.attention.registry import (ShortInputRule, approximate_methods, available_methods, exact_methods,
                                      get_method, method_class, register_method, unregister_method)
from spava.comm.collectives import SPComm
from spava.config import load_config

DESIGN = Path(__file__).resolve().parent.parent / "docs" / "design.md"
TOY_MODULE = "spava_docs_toy_method"  # the module the documented block runs in
TOY = "cyclic_ring"
FLOAT64_TOL = 1e-12  # float64 ring merges of N <= 331 keys: errors ~1e-15


def _documented_block() -> str:
    text = DESIGN.read_text()
    section = text[text.index("### Adding a method"):]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def _load_toy() -> types.ModuleType:
    """Run the documented block as module `TOY_MODULE` (importable by name, so its class loads by target)."""
    module = types.ModuleType(TOY_MODULE)
    sys.modules[TOY_MODULE] = module
    exec(compile(_documented_block(), str(DESIGN), "exec"), module.__dict__)
    return module


@pytest.fixture
def toy():
    module = _load_toy()
    yield module
    unregister_method(TOY)
    del sys.modules[TOY_MODULE]


def test_a_registered_method_is_listed_and_configurable(toy):
    assert available_methods()[-1] == TOY and TOY in exact_methods() and TOY not in approximate_methods()
    assert methods.find_method(TOY).target == f"{TOY_MODULE}:CyclicRingAttention"
    assert method_class(TOY) is toy.CyclicRingAttention
    config = load_config(None, [f"prefill.attention.method={TOY}", "prefill.min_tokens_per_rank=64",
                                f"prefill.short_input_method={TOY}"])
    assert config.prefill.attention.method == TOY
    rule = ShortInputRule.from_config(config.prefill)
    assert rule.choose(get_method("spava"), 64 * 4 - 1, 4).name == TOY
    from spava.bench.harness import method_choices
    from spava.tools.check_attention import sequence_parallel_methods

    assert TOY in method_choices() and TOY in sequence_parallel_methods()


def test_unknown_and_approximate_short_input_methods_are_refused():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        load_config(None, ["prefill.attention.method=nope"])
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        load_config(None, ["prefill.min_tokens_per_rank=10", "prefill.short_input_method=nope"])
    with pytest.raises(ValueError, match=r"exact method \(full, ring, zigzag_ring, ulysses\)"):
        load_config(None, ["prefill.min_tokens_per_rank=10", "prefill.short_input_method=spava"])


def test_loading_a_config_with_the_short_input_rule_imports_no_torch():
    import subprocess

    code = ("import sys; from spava.config import load_config; "
            "load_config('configs/demo_cpu.yaml', ['prefill.min_tokens_per_rank=4096']); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_the_registered_plans_tile_the_prompt_in_global_order(toy, world_size):
    method = get_method(TOY)
    plans = [method.plan(203, 7, world_size, rank) for rank in range(world_size)]
    owned = torch.zeros(203, dtype=torch.long)
    for plan in plans:
        ids = plan.local_token_ids()
        assert bool((ids[1:] > ids[:-1]).all())
        owned[ids] += 1
        assert plan.owned == tuple(plan.global_ranges())
    assert torch.equal(owned, torch.ones_like(owned))
    assert plans[0].chunk_owner == tuple(i % world_size for i in range(2 * world_size))
    with pytest.raises(ValueError, match="cannot fill"):
        method.plan(2 * world_size - 1, 0, world_size, 0)


def _forward_matches_dense(rank: int, world_size: int) -> None:
    """On each rank: register the toy (a spawned process starts with the built-ins only), run it."""
    _load_toy()
    generator = torch.Generator().manual_seed(3)
    failures = []
    for num_tokens, num_query, num_heads, num_kv_heads in [(203, 7, 8, 2), (331, 13, 6, 3)]:
        shapes = [(num_tokens, h, 32) for h in (num_heads, num_kv_heads, num_kv_heads)]
        q, k, v = (torch.randn(s, generator=generator, dtype=torch.float64) for s in shapes)
        ref, _ = get_backend("math").attend(q, k, v, is_causal=True)
        method = get_method(AttentionConfig(method=TOY, backend="torch_cpu"))
        plan = method.plan(num_tokens, num_query, world_size, rank)
        out = method.forward(*(plan.slice_local(x) for x in (q, k, v)), method.context(plan, SPComm()))
        error = float((out - plan.slice_local(ref)).abs().max())
        if not error <= FLOAT64_TOL:
            failures.append(f"{TOY} W={world_size} rank={rank} N={num_tokens}: max error {error:.3e}")
    assert not failures, "\n".join(failures)


def test_the_registered_exact_method_equals_dense_attention(run_ranks):
    run_ranks(_forward_matches_dense, 3, timeout=240)


def test_the_registry_refuses_clashes_and_disagreements(toy):
    with pytest.raises(ValueError, match="already registered"):
        methods.add_entry(methods.MethodEntry(TOY, "elsewhere:Other", is_exact=True))
    with pytest.raises(ValueError, match="built in"):
        unregister_method("spava")
    with pytest.raises(ValueError, match="not a subclass"):
        register_method(int)

    class Mislabelled(toy.CyclicRingAttention):
        name = "mislabelled"

    toy.Mislabelled = Mislabelled
    methods.add_entry(methods.MethodEntry("mislabelled", f"{TOY_MODULE}:Mislabelled", is_exact=False))
    try:
        with pytest.raises(RuntimeError, match="make them agree"):
            get_method("mislabelled")
    finally:
        unregister_method("mislabelled")
    with pytest.raises(ValueError, match="is not registered"):
        unregister_method("mislabelled")
