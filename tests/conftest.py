"""Shared test set-up: the `slow` marker applied by rule, and fixtures used across modules.

`pytest -m "not slow"` is the quick inner loop (in-process tests: 2.5 min on 2 busy cores);
`pytest` runs everything, as CI does. A test is slow when it spawns processes: its module runs gloo
ranks (it takes the `run_ranks` fixture) or its module starts a pipeline's workers (it imports
`Pipeline`), or it is marked `@pytest.mark.slow` itself (modules that run spava's CLI, servers or
launchers, Triton's interpreter). GPU tests are marked `gpu` and skip without CUDA.

Helpers shared by several modules live in `tests/_*.py` (tiny model builders, the multi-process
harness, server helpers); pytest puts this folder on `sys.path`, so modules import them by name.
"""

from __future__ import annotations

import pytest

def _spawns_processes(item) -> bool:
    module = getattr(item, "module", None)
    return "run_ranks" in getattr(item, "fixturenames", ()) or (module is not None and hasattr(module, "Pipeline"))


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if _spawns_processes(item) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def run_ranks():
    """`run_ranks(fn, world_size, *args, timeout=...)`: run `fn(rank, world_size, *args)` on spawned
    gloo ranks with a hard timeout, failing with the first rank's traceback (`_dist.run_distributed`)."""
    from _dist import run_distributed

    return run_distributed
