"""A spawned rank that ends with `end_spawned_rank` leaves no named semaphore behind: the parent's
resource tracker (which prints a warning for each one at exit) stays quiet. torch.compile's progress
bar makes such a semaphore (tqdm's lock) in every rank that compiles; here the rank makes one itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # spawns a gloo rank in a fresh interpreter

SCRIPT = """
import multiprocessing, sys
import torch.distributed as dist
import torch.multiprocessing as mp
from spava.comm.collectives import end_spawned_rank

LOCKS = []

def rank(index, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    LOCKS.append(multiprocessing.get_context("spawn").RLock())  # a named semaphore, registered
    end_spawned_rank()

if __name__ == "__main__":
    from spava.runtime.launch import free_port
    mp.start_processes(rank, args=(free_port(),), nprocs=1, start_method="spawn")
    print("done")
"""


def test_a_spawned_rank_ends_without_leaking_semaphores(tmp_path):
    script = tmp_path / "spawned.py"
    script.write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "done" in run.stdout, run.stderr
    assert "leaked semaphore" not in run.stderr, run.stderr
