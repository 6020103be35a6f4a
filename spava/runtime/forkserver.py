"""The fork server: one process imports the heavy modules once, then forks every worker from there.

Each worker process used to import torch and transformers itself: several CPU-seconds per process,
paid again at every restart, and on a small host the workers of one pipeline competed for the same
cores doing it. The fork server pays it once; a forked worker starts in a fraction of a second.

Runs as `python -m spava.runtime.forkserver --preload a,b,c`, started by `ForkServerClient` in the
pipeline's process, and dies with it (PR_SET_PDEATHSIG; its workers die with it in turn). It forks
only from its main thread and never runs a torch op or touches CUDA, which keeps forking safe (as
PyTorch's DataLoader forks its workers); the launcher uses it only when every device is a CPU
(`runtime.fork_server: auto`). Protocol, one JSON object per line:

  client -> server  {"argv": [...], "env": {...}, "log": path or null}    fork a worker
  server -> client  {"ready": true}                                       the preload is done
                    {"pid": N}                                            the worker forked for the request
                    {"exit": N, "code": C}                                a worker ended (C as Popen.returncode)
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import select
import signal
import sys
import traceback


def _die_with_parent(parent_pid: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent_pid:
        os._exit(0)


def _preload(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: BLE001 - a worker that needs it reports the failure itself
            print(f"spava fork server: could not preload {name}: {error}", file=sys.stderr, flush=True)


def _write(message: dict) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _run_worker(request: dict) -> int:
    """In the forked child: become the worker (own stdio, environment and signal handlers)."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if request.get("log"):
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 2)
        os.close(log)
    os.dup2(2, 1)  # never keep the server's stdout pipe: the client detects the server's end by its EOF
    for sig in (signal.SIGCHLD, signal.SIGTERM):  # SIGINT stays ignored: Ctrl-C is the pipeline's
        signal.signal(sig, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(request["env"])
    from spava.runtime.worker import main

    sys.argv = ["spava-worker", *request["argv"]]
    return main(request["argv"])


def _fork(request: dict) -> None:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _run_worker(request)
        except BaseException:  # noqa: BLE001 - the child must never return into the server loop
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _write({"pid": pid})


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _write({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def serve(preload: list[str]) -> None:
    _preload(preload)
    _write({"ready": True})
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.05)
        if readable:
            chunk = os.read(0, 65536)
            if not chunk:  # the client closed our stdin: stop (workers were told to exit already)
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.strip():
                    _fork(json.loads(line))
        _reap()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="spava fork server (started by the launcher)")
    parser.add_argument("--preload", default="", help="comma-separated modules to import before forking")
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_parent(args.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    serve([name for name in args.preload.split(",") if name])
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # skip interpreter teardown: unloading torch and transformers takes seconds and frees nothing
    # the OS would not; the pipeline's close waits for this process to end
    os._exit(code)
