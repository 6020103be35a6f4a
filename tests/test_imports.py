"""Importing spava stays light: no torch, Triton, flash-attn, deepspeed, PyAV or ZMQ at `import spava`."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys


def test_import_spava_is_light():
    code = ("import sys, spava; heavy = [m for m in ('torch', 'triton', 'flash_attn', 'deepspeed', 'av', 'zmq', "
            "'transformers') if m in sys.modules]; print(','.join(heavy))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert output == ""
    # Imports inside functions (sweeps, benchmarks) count too.
    kernels_dir = pathlib.Path(__file__).resolve().parents[1] / "kernels" / "spava_kernels"
    pattern = re.compile(r"^\s*(from|import)\s+spava(\.|\s|$)", re.MULTILINE)
    offenders = [path.name for path in kernels_dir.glob("*.py") if pattern.search(path.read_text())]
    assert offenders == []


def test_public_names_resolve_lazily():
    import spava

    assert spava.Pipeline.__name__ == "Pipeline" and spava.RunResult.__name__ == "RunResult"
    assert callable(spava.load_config)


def test_the_kernels_package_is_the_bottom_layer():
    """spava_kernels owns its torch references and imports nothing from spava (spava imports it)."""
    code = ("import sys, pkgutil, importlib, spava_kernels\n"
            "for info in pkgutil.iter_modules(spava_kernels.__path__):\n"
            "    importlib.import_module('spava_kernels.' + info.name)\n"
            "print(','.join(sorted(m for m in sys.modules if m == 'spava' or m.startswith('spava.'))))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert output == ""
