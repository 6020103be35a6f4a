"""Starting worker processes: the local launcher (one machine), used by the scheduler.

`LocalLauncher` spawns one `python -m spava.runtime.worker` process per worker, each dying with its
parent (PR_SET_PDEATHSIG in the child). Model ranks get a fresh rendezvous port every time the
model group is (re)started. Multi-node launches (torchrun / deepspeed hostfiles) build on the same
worker entry point.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class WorkerSpec:
    """One worker to run: its id, role and rank."""

    worker_id: str
    role: str  # video | layout | model
    rank: int


def local_specs(config, node_layout=None) -> list[WorkerSpec]:
    """The workers this node runs: all of them on one machine; per `NodeLayout` across nodes."""
    specs = worker_specs(config)
    if node_layout is None:
        return specs
    ranks = set(node_layout.model_ranks(node_layout.node_rank))
    return [s for s in specs if (s.role == "model" and s.rank in ranks) or (s.role != "model" and node_layout.is_head)]


def worker_specs(config) -> list[WorkerSpec]:
    """Every worker the pipeline needs: video and layout workers, then the model ranks."""
    specs = [WorkerSpec(f"video-{i}", "video", i) for i in range(config.video.num_workers)]
    specs += [WorkerSpec(f"layout-{i}", "layout", i) for i in range(config.layout.num_workers)]
    specs += [WorkerSpec(f"model-{rank}", "model", rank) for rank in range(config.world_size)]
    return specs


class LocalLauncher:
    """Spawns, polls and stops the workers of one pipeline on this machine."""

    def __init__(self, config_path: str, control_address: str, *, secret: str = "", is_quiet: bool = False,
                 log_path: str | None = None):
        self.config_path = config_path
        self.control_address = control_address
        self.secret = secret
        self.is_quiet = is_quiet
        self.log_path = log_path
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, spec: WorkerSpec, dist_port: int = 0) -> None:
        command = [
            sys.executable, "-m", "spava.runtime.worker", "--role", spec.role, "--rank", str(spec.rank),
            "--worker-id", spec.worker_id, "--config", self.config_path, "--control", self.control_address,
            "--dist-port", str(dist_port),
        ]
        if self.is_quiet:
            command.append("--quiet")
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        if self.secret:  # through the environment, not the command line (visible in `ps`)
            env["SPAVA_SECRET"] = self.secret
        stderr = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - owned by the child
        self.processes[spec.worker_id] = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                                          stdout=stderr, stderr=stderr)
        if stderr is not None:
            stderr.close()

    def is_local(self, worker_id: str) -> bool:
        """Whether this launcher started (and can restart) the worker; others run on other nodes."""
        return worker_id in self.processes

    def exit_code(self, worker_id: str) -> int | None:
        """None while running; the exit code once the process ended."""
        process = self.processes.get(worker_id)
        return None if process is None else process.poll()

    def pid(self, worker_id: str) -> int | None:
        process = self.processes.get(worker_id)
        return None if process is None else process.pid

    def kill(self, worker_id: str) -> None:
        process = self.processes.pop(worker_id, None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def stop_all(self, grace_s: float = 5.0) -> None:
        """Let workers exit (they were told to), then terminate, then kill what is left."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(p.poll() is None for p in self.processes.values()):
            time.sleep(0.05)
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.processes.clear()
