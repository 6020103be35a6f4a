"""No orphans: workers die with the process that started them (SIGKILL of the parent, Ctrl-C, which
also exits 130 with one line and no traceback)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # starts spava processes (pipelines, CLI, servers)

STARTER = """
import sys, time
from spava.runtime.pipeline import Pipeline
pipe = Pipeline.from_yaml("configs/demo_cpu.yaml", ["runtime.log_level=ERROR"], is_quiet=True).start()
print(" ".join(str(p.pid) for p in pipe.scheduler.launcher.processes.values()), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _start_parent() -> tuple[subprocess.Popen, list[int]]:
    parent = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True)
    line = parent.stdout.readline()
    pids = [int(pid) for pid in line.split()]
    assert len(pids) == 5, line  # video, layout and three model ranks (forked by the fork server)
    return parent, pids


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    return [pid for pid in pids if _alive(pid)]


def test_workers_die_when_the_parent_is_killed():
    parent, pids = _start_parent()
    parent.kill()
    parent.wait()
    assert _wait_gone(pids, 15) == []


def test_a_closed_pipeline_refuses_work_and_starts_again_cleanly(tmp_path):
    from spava.config import load_config
    from spava.runtime.pipeline import Pipeline

    config = load_config("configs/demo_cpu.yaml", ["runtime.log_level=ERROR", "decode.max_new_tokens=2",
                                                   f"runtime.shm_dir={tmp_path}"])
    pipeline = Pipeline.from_config(config, is_quiet=True)
    for _ in range(2):  # a second start after close is a fresh pipeline
        with pipeline:
            assert pipeline.run(None, "hello?").finish_reason == "length"
            pids = list(pipeline.scheduler.launcher.pids())
        assert _wait_gone(pids, 15) == [] and not os.listdir(tmp_path)
        with pytest.raises(RuntimeError, match="closed; call start"):
            pipeline.submit(None, "still there?")


def test_ctrl_c_on_spava_run_stops_every_worker(tmp_path):
    (tmp_path / "layout-sleep").write_text("60")  # Ctrl-C lands while the request waits in layout
    # PYTHONFAULTHANDLER: if it hangs, SIGABRT makes it print every thread's stack for the failure
    env = dict(os.environ, SPAVA_FAULT_DIR=str(tmp_path), PYTHONFAULTHANDLER="1")
    # a background job (`pytest ... &` from a script) starts with Ctrl-C ignored, and its children
    # would inherit that: the child gets the default disposition, as from a terminal
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen([sys.executable, "-m", "spava.cli", "run", "--verbose",
                                    "stages.layout=spava.testing.faults:FaultyLayout"], env=env,
                                   stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                   start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    num_ready, deadline = 0, time.monotonic() + 240
    while time.monotonic() < deadline and num_ready < 5:
        num_ready += "INFO ready on" in process.stderr.readline()  # a worker's own line
    pids = _descendants(process.pid)
    os.killpg(process.pid, signal.SIGINT)
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        alive = [pid for pid in [process.pid, *pids] if _alive(pid)]
        os.kill(process.pid, signal.SIGABRT)
        _, err = process.communicate(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"spava run had not exited 60 s after Ctrl-C (alive: {alive}); its output:\n{err[-8000:]}")
    assert len(pids) >= 5 and _wait_gone(pids, 15) == []
    assert process.returncode == 130 and "Traceback" not in err and "spava run: interrupted" in err, err[-3000:]


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        with open(f"/proc/{todo[0]}/task/{todo[0]}/children") as handle:
            children = [int(child) for child in handle.read().split()]
        found += children
        todo = todo[1:] + children
    return found
