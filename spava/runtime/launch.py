"""Starting worker processes: the local launcher (one machine), used by the scheduler.

`LocalLauncher` starts one worker process per worker, each dying with its parent
(PR_SET_PDEATHSIG in the child): a fresh `python -m spava.runtime.worker` interpreter, or a fork of
the fork server (`spava.runtime.forkserver`), which imported torch and transformers once. Workers
run in a session of their own, so the terminal's Ctrl-C (or Ctrl-Z) reaches only the pipeline's
process, which stops them in order. Model
ranks get a fresh rendezvous port every time the model group is (re)started. Across machines
torchrun or the deepspeed launcher starts the model ranks (`spava.runtime.node`); the head's
launcher then starts its model rank into that world (`joins_launched_world`), and restarts none.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from spava.comm.shm import OWNER_ENV


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


def local_specs(config, model_ranks=None) -> list[WorkerSpec]:
    """The workers a pipeline starts: the video and layout workers and the model ranks in
    `model_ranks` (all of them by default; on the head of a launcher-started world, its own)."""
    specs = worker_specs(config)
    if model_ranks is None:
        return specs
    ranks = set(model_ranks)
    return [s for s in specs if s.role != "model" or s.rank in ranks]


def worker_specs(config) -> list[WorkerSpec]:
    """Every worker the pipeline needs: video and layout workers, then the model ranks."""
    specs = [WorkerSpec(f"video-{i}", "video", i) for i in range(config.video.num_workers)]
    specs += [WorkerSpec(f"layout-{i}", "layout", i) for i in range(config.layout.num_workers)]
    specs += [WorkerSpec(f"model-{rank}", "model", rank) for rank in range(config.world_size)]
    return specs


logger = logging.getLogger("spava.launch")
PARENT_ENV = "SPAVA_PARENT_PID"  # the pid a worker must have as parent (else its parent died before it started)


class LocalLauncher:
    """Spawns, polls and stops the workers of one pipeline on this machine.

    Workers that import torch (layout, model ranks) are forked from a `ForkServerClient` when
    `fork_server` is on (see `use_fork_server`); the video workers, which need no torch, and every
    worker otherwise are started as fresh interpreters.
    """

    def __init__(self, config_path: str, control_address: str, *, secret: str = "", is_quiet: bool = False,
                 log_path: str | None = None, owner: str | None = None, fork_server: bool = False,
                 preload: tuple[str, ...] = (), joins_launched_world: bool = False):
        """`owner`: the pipeline's shared-memory owner tag, given to every worker (`SPAVA_SHM_OWNER`);
        `preload`: modules the fork server imports before forking; `joins_launched_world`: model
        ranks join the world an external launcher started (RANK, MASTER_ADDR... in this process's
        environment), so they cannot be restarted from here."""
        self.config_path = config_path
        self.control_address = control_address
        self.secret = secret
        self.is_quiet = is_quiet
        self.log_path = log_path
        self.owner = owner
        self.processes: dict[str, "subprocess.Popen | ForkedProcess"] = {}
        self._fork_server: ForkServerClient | None = None
        self._uses_fork_server = fork_server
        self._preload = preload
        self.joins_launched_world = joins_launched_world
        self._joined_ids: set[str] = set()  # model ranks in the launcher's world: never restarted from here
        if fork_server:  # start importing now, while the rest of the pipeline gets ready
            self._fork_server = ForkServerClient(preload, self._environment(), log_path)

    def _environment(self, parent_pid: int | None = None) -> dict[str, str]:
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        env[PARENT_ENV] = str(os.getpid() if parent_pid is None else parent_pid)
        if self.owner:
            env[OWNER_ENV] = self.owner
        if self.secret:  # through the environment, not the command line (visible in `ps`)
            env["SPAVA_SECRET"] = self.secret
        return env

    def start(self, spec: WorkerSpec, dist_port: int = 0) -> None:
        argv = ["--role", spec.role, "--rank", str(spec.rank), "--worker-id", spec.worker_id, "--config",
                self.config_path, "--control", self.control_address, "--dist-port", str(dist_port)]
        if spec.role == "model" and self.joins_launched_world:
            argv += ["--dist-init", "env"]
            self._joined_ids.add(spec.worker_id)
        if self.is_quiet:
            argv.append("--quiet")
        if self._uses_fork_server and spec.role != "video":
            if self._fork_server is None or not self._fork_server.is_alive:
                self._fork_server = ForkServerClient(self._preload, self._environment(), self.log_path)
            env = self._environment(parent_pid=self._fork_server.pid)
            self.processes[spec.worker_id] = self._fork_server.spawn(argv, env)
            return
        stderr = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - owned by the child
        self.processes[spec.worker_id] = subprocess.Popen(
            [sys.executable, "-m", "spava.runtime.worker", *argv], env=self._environment(),
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True)
        if stderr is not None:
            stderr.close()

    def is_local(self, worker_id: str) -> bool:
        """Whether this launcher started the worker and can restart it; others run on other nodes,
        and model ranks of a launcher-started world are never restarted from here."""
        return worker_id in self.processes and worker_id not in self._joined_ids

    def exit_code(self, worker_id: str) -> int | None:
        """None while running; the exit code once the process ended."""
        process = self.processes.get(worker_id)
        return None if process is None else process.poll()

    def pid(self, worker_id: str) -> int | None:
        """The worker's pid (None when not started here, or while its fork is still on the way)."""
        process = self.processes.get(worker_id)
        return None if process is None else process.pid

    def pids(self) -> set[int]:
        """Every process this launcher runs now: its workers and the fork server."""
        pids = {p.pid for p in self.processes.values() if p.pid is not None and p.poll() is None}
        if self._fork_server is not None and self._fork_server.is_alive:
            pids.add(self._fork_server.pid)
        return pids

    def kill(self, worker_id: str) -> None:
        process = self.processes.pop(worker_id, None)
        if process is not None and process.poll() is None:
            process.kill()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                logger.error("worker %s (pid %s) did not exit 10 s after SIGKILL", worker_id, process.pid)

    def stop_all(self, grace_s: float = 5.0) -> None:
        """Let workers exit (they were told to), then terminate, then kill what is left; then the
        fork server."""
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(p.poll() is None for p in self.processes.values()):
            time.sleep(0.05)
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for worker_id, process in self.processes.items():
            try:
                process.wait(timeout=max(grace_s, 0.5))
            except subprocess.TimeoutExpired:
                process.kill()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    logger.error("worker %s (pid %s) did not exit 10 s after SIGKILL", worker_id, process.pid)
        self.processes.clear()
        if self._fork_server is not None:
            self._fork_server.close()
            self._fork_server = None


def use_fork_server(config) -> bool:
    """`runtime.fork_server`: on, off, or auto = on when no device is CUDA (a process that
    initialised CUDA cannot be forked safely; the fork server never does, but torch's imports on a
    GPU host are not worth that risk)."""
    mode = config.runtime.fork_server
    return mode == "on" or (mode == "auto" and not config.uses_cuda)


def preload_modules(config) -> tuple[str, ...]:
    """What the fork server imports before forking: torch, transformers' shared machinery (which
    their model and tokenizer classes pull in on first use) and the configured stage classes."""
    stages = tuple(dict.fromkeys(target.split(":")[0] for target in config.stages.values()))
    return ("torch", "torch.distributed", "transformers", "transformers.models.auto.modeling_auto",
            "transformers.models.auto.tokenization_auto", "transformers.modeling_utils", "spava.runtime.worker",
            "spava.runtime.roles", *stages)


class ForkedProcess:
    """A worker forked by the fork server, with the part of `subprocess.Popen`'s interface the
    launcher uses. Its pid is None until the server has forked it."""

    def __init__(self, server: "ForkServerClient"):
        self._server = server
        self.pid: int | None = None
        self.returncode: int | None = None
        self._is_kill_requested = False

    def poll(self) -> int | None:
        return self.returncode

    def _signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        if self.pid is None:
            self._is_kill_requested = True  # sent as soon as the pid is known
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._server.changed:
            while self.returncode is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout)
                self._server.changed.wait(remaining)
        return self.returncode


class ForkServerClient:
    """Starts `spava.runtime.forkserver` and asks it for workers; a reader thread follows its answers."""

    def __init__(self, preload: tuple[str, ...], env: dict[str, str], log_path: str | None):
        self.log_path = log_path
        stderr = open(log_path, "ab") if log_path else None  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "spava.runtime.forkserver", "--preload", ",".join(preload),
             "--parent-pid", str(os.getpid())],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
        if stderr is not None:
            stderr.close()
        self.changed = threading.Condition()
        self._waiting: collections.deque[ForkedProcess] = collections.deque()  # forks asked for, in order
        self._children: dict[int, ForkedProcess] = {}
        self._exits: dict[int, int] = {}  # exits reported before their pid was matched
        self._reader = threading.Thread(target=self._read, daemon=True, name="spava-forkserver")
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def is_alive(self) -> bool:
        return self.process.poll() is None and self._reader.is_alive()

    def spawn(self, argv: list[str], env: dict[str, str]) -> ForkedProcess:
        """Ask for a worker; returns at once (the server answers once its preload is done)."""
        child = ForkedProcess(self)
        request = json.dumps({"argv": argv, "env": env, "log": self.log_path}) + "\n"
        with self.changed:
            self._waiting.append(child)
            try:
                self.process.stdin.write(request.encode())
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError):  # the server is gone: the child "exited" at once
                self._waiting.remove(child)
                child.returncode = -signal.SIGKILL
        return child

    def _read(self) -> None:
        for line in self.process.stdout:
            message = json.loads(line)
            with self.changed:
                if "pid" in message:
                    self._on_forked(self._waiting.popleft(), message["pid"])
                elif "exit" in message:
                    child = self._children.pop(message["exit"], None)
                    if child is not None:
                        child.returncode = message["code"]
                    else:
                        self._exits[message["exit"]] = message["code"]
                self.changed.notify_all()
        with self.changed:  # the server ended: its workers died with it (PR_SET_PDEATHSIG)
            for child in [*self._waiting, *self._children.values()]:
                child.returncode = -signal.SIGKILL if child.returncode is None else child.returncode
            self._waiting.clear()
            self._children.clear()
            self.changed.notify_all()

    def _on_forked(self, child: ForkedProcess, pid: int) -> None:
        child.pid = pid
        if pid in self._exits:
            child.returncode = self._exits.pop(pid)
            return
        self._children[pid] = child
        if child._is_kill_requested:
            child.kill()

    def close(self) -> None:
        """End the server (its workers were stopped first) and reap it."""
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self._reader.ident is not None:  # started (Ctrl-C may land between creating and starting it)
            self._reader.join(timeout=5)
