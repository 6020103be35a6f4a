"""spava's layers import one way: stages import only `stages/base.py` and the layers below them, and
the lower layers (models, media, plan, comm) never import the runtime, the stages or the front ends.

Every import statement counts, at module level or inside a function (read from the source with
`ast`, so nothing is imported here).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

SPAVA = pathlib.Path(__file__).resolve().parents[1] / "spava"
# what a stage may import from spava: the stage contract and the layers below the stages
STAGE_ALLOWED = ("spava.stages.base", "spava.comm", "spava.models", "spava.media", "spava.plan", "spava.attention",
                 "spava.objects", "spava.progress")
LOWER_LAYERS = ("models", "media", "plan", "comm")
UPPER_LAYERS = ("spava.runtime", "spava.stages", "spava.server", "spava.cli", "spava.bench", "spava.eval")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(SPAVA.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(path: pathlib.Path) -> str:
    """The package that relative imports in `path` start from."""
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def spava_imports(source: str, package: str) -> list[tuple[int, str]]:
    """(line, imported module) of every import of a spava module in `source`; `from spava.x import y`
    counts as `spava.x.y` (y may be a submodule), relative imports are resolved from `package`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name == "spava" or name.startswith("spava.")]


def imports_of(path: pathlib.Path) -> list[tuple[int, str]]:
    return spava_imports(path.read_text(), package_of(path))


def is_under(name: str, prefixes) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def test_import_parser_sees_every_form():
    """The parser itself: plain, from, relative and function-level imports are all found."""
    source = ("import os\nimport spava.runtime.policy\nfrom spava.comm import messages\nfrom . import video\n"
              "from .base import Stage\ndef f():\n    from ..runtime.state import Request\n")
    assert [name for _, name in spava_imports(source, "spava.stages")] == [
        "spava.runtime.policy", "spava.comm.messages", "spava.stages.video", "spava.stages.base.Stage",
        "spava.runtime.state.Request"]
    assert module_name(SPAVA / "stages" / "video.py") == "spava.stages.video"
    assert package_of(SPAVA / "stages" / "__init__.py") == "spava.stages"


@pytest.mark.parametrize("path", sorted((SPAVA / "stages").glob("*.py")), ids=lambda p: p.name)
def test_stages_import_only_base_and_lower_layers(path):
    bad = [f"{path.name}:{line} imports {name}" for line, name in imports_of(path)
           if not is_under(name, STAGE_ALLOWED)]
    assert bad == [], "stages import only spava.stages.base and the layers below them:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer", LOWER_LAYERS)
def test_lower_layers_never_import_upper_layers(layer):
    bad = [f"{path.relative_to(SPAVA)}:{line} imports {name}" for path in sorted((SPAVA / layer).rglob("*.py"))
           for line, name in imports_of(path) if is_under(name, UPPER_LAYERS)]
    assert bad == [], f"spava.{layer} sits below the runtime, stages and front ends:\n" + "\n".join(bad)
