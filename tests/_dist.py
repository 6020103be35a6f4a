"""Multi-process test harness: run `fn(rank, world_size, *args)` on W gloo ranks with a hard timeout.

One spawn per call (about 5 s of start-up), so each test module spawns once per world size and runs
many cases inside the workers. A worker's exception fails the test with that worker's traceback.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world_size: int, init_file: str, fn, args, error_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, *args)
    except BaseException:
        with open(os.path.join(error_dir, f"rank{rank}.txt"), "w") as handle:
            handle.write(traceback.format_exc())
        raise
    dist.barrier()
    dist.destroy_process_group()
    # skip interpreter teardown: gloo's background threads can abort ("terminate called without an
    # active exception") while the process exits, after the test itself passed
    os._exit(0)


def run_distributed(fn, world_size: int, *args, timeout: float = 240.0) -> None:
    """Run `fn` on `world_size` spawned gloo ranks; raise AssertionError with the first traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        context = mp.start_processes(
            _worker, args=(world_size, init_file, fn, args, tmp), nprocs=world_size, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise AssertionError(f"distributed test timed out after {timeout:.0f} s")
        except mp.ProcessRaisedException as error:
            raise AssertionError(_first_error(tmp) or str(error)) from None
        except mp.ProcessExitedException as error:
            raise AssertionError(_first_error(tmp) or str(error)) from None
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()


def _first_error(error_dir: str) -> str:
    for name in sorted(os.listdir(error_dir)):
        if name.startswith("rank") and name.endswith(".txt"):
            with open(os.path.join(error_dir, name)) as handle:
                return f"{name[:-4]} failed:\n{handle.read()}"
    return ""
