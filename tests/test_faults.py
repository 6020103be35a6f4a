"""Fault injection: kill -9, SIGSTOP and SIGTERM every worker role and the parent mid-stream.

Each worker fault lands at a random point (fixed seed) of a stream of requests to one pipeline;
then every request must have been answered or failed with a clear error (never a timeout, never a
hang), the pipeline must be healthy again and serve, no process may be left over and nothing may
be left in its shared-memory directory. The parent faults run pipelines in subprocesses: kill -9
leaves files that the next pipeline sweeps at start (and only those), SIGTERM cleans up at once,
and a stopped `spava launch` server fails its client's requests instead of leaving them waiting.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spava.comm.shm import is_process_alive, owner_tag
from spava.config import load_config
from spava.media.synthetic import write_synthetic_video
from spava.runtime.launch import free_port
from spava.runtime.pipeline import Pipeline, RequestError
from spava.testing.faults import FAULT_DIR_ENV, arm_fault

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = [
    "stages.video=spava.testing.faults:FaultyVideo",
    "stages.layout=spava.testing.faults:FaultyLayout",
    "stages.prefill=spava.testing.faults:FaultyPrefill",
    "runtime.heartbeat_interval_s=0.25",
    "runtime.heartbeat_timeout_s=4",
    "runtime.request_timeout_s=90",
    "runtime.log_level=ERROR",
    "layout.max_visual_tokens=5000",
    "decode.max_new_tokens=4",
    # one restart per role within 6 s: a fault test may spend it, the next waits for the window
    "runtime.max_worker_restarts=1",
    "runtime.restart_window_s=6",
]
FAILURE_KINDS = {"worker_died", "unhealthy", "internal"}  # never timeout: that would be a hang


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task") if os.path.isdir(f"/proc/{parent}/task") else []:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as handle:
                    children = {int(c) for c in handle.read().split()}
            except FileNotFoundError:
                continue
            todo.extend(children - found)
            found |= children
    return {p for p in found if is_process_alive(p)}


def _wait(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    paths = {name: root / name for name in ("flags", "shm", "videos")}
    for path in paths.values():
        path.mkdir()
    previous = os.environ.get(FAULT_DIR_ENV)
    os.environ[FAULT_DIR_ENV] = str(paths["flags"])
    paths["video"] = write_synthetic_video(paths["videos"] / "clip.mp4", num_frames=16, height=64, width=96, fps=8.0)
    yield paths
    if previous is None:
        os.environ.pop(FAULT_DIR_ENV, None)
    else:
        os.environ[FAULT_DIR_ENV] = previous


@pytest.fixture(scope="module")
def pipeline(dirs):
    config = load_config("configs/demo_cpu.yaml", [*OVERRIDES, f"runtime.shm_dir={dirs['shm']}"])
    # processes this test process already had (e.g. multiprocessing's resource tracker, left by
    # earlier tests that spawned ranks) are not the pipeline's
    dirs["preexisting"] = _descendants(os.getpid())
    with Pipeline.from_config(config, is_quiet=True) as pipe:
        yield pipe


def _healthy_and_idle(pipeline) -> bool:
    try:
        status = pipeline.status(timeout_s=5)
    except (RequestError, TimeoutError):
        return False
    return status.is_healthy and status.num_inflight == 0 and set(status.workers.values()) == {"idle"}


def _target(pipeline, role: str, rng: random.Random) -> tuple[str, int]:
    worker_id = rng.choice(sorted(w for w in pipeline.scheduler.workers if w.startswith(role)))
    return worker_id, _wait(lambda: pipeline.scheduler.launcher.pid(worker_id), 30, f"{worker_id} forked")


def _check_clean(pipeline, dirs, signalled: int) -> None:
    assert not is_process_alive(signalled), "the signalled worker is gone"
    launcher = pipeline.scheduler.launcher
    _wait(lambda: _descendants(os.getpid()) - dirs["preexisting"] == launcher.pids(), 15,
          "no process besides the pipeline's own")
    assert not [name for name in os.listdir(dirs["shm"]) if name.startswith("spava-")]
    ours = f"spava-p{os.getpid()}-"
    import tempfile

    folders = [name for name in os.listdir(tempfile.gettempdir()) if name.startswith(ours)]
    assert folders == [os.path.basename(pipeline._tmp)], folders


@pytest.mark.timeout(300)
@pytest.mark.parametrize("role", ["video", "layout", "model"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM], ids=["kill", "stop", "term"])
def test_a_worker_fault_mid_stream_fails_cleanly_and_heals(pipeline, dirs, role, sig):
    rng = random.Random(f"{role}-{sig.name}")
    _wait(lambda: _healthy_and_idle(pipeline), 120, "healthy before the fault")
    worker_id, target = _target(pipeline, role, rng)
    videos = [str(dirs["video"]), None]
    handles = [pipeline.submit(videos[k % 2], f"What happens? ({k})", request_id=f"{role}-{sig.name}-{k}")
               for k in range(6)]
    time.sleep(rng.uniform(0.0, 1.5))
    os.kill(target, sig)
    for handle in handles:
        try:
            result = handle.result(timeout=150)
            assert len(result.token_ids) == 4
        except RequestError as error:
            assert error.kind in FAILURE_KINDS and str(error).strip(), (error.kind, str(error))
    # the death is noticed (a stopped worker by its missing heartbeats, then killed) and the worker
    # restarted: a new process; until then a request given to it would fail like those above
    _wait(lambda: pipeline.scheduler.launcher.pid(worker_id) not in (None, target), 60, f"{worker_id} restarted")
    _wait(lambda: _healthy_and_idle(pipeline), 120, "healthy and idle again")
    assert pipeline.run(str(dirs["video"]), "And now?").finish_reason == "length"
    _check_clean(pipeline, dirs, target)


@pytest.mark.timeout(300)
def test_a_worker_that_keeps_dying_stays_down_for_the_window_then_comes_back(pipeline, dirs):
    _wait(lambda: _healthy_and_idle(pipeline), 120, "healthy before the faults")
    time.sleep(6.5)  # the previous tests' restarts leave the window
    for _ in range(2):  # the first restart spends the budget of 1 per 6 s; the second death stays down
        arm_fault(dirs["flags"], "layout-crash")
        with pytest.raises(RequestError) as error:
            pipeline.run(None, "crash the layout worker")
        assert error.value.kind == "worker_died" and error.value.stage == "layout"
    status = pipeline.status()
    assert not status.is_healthy and status.workers["layout-0"] == "dead"
    assert "every layout worker is down" in status.detail and "runtime.restart_window_s=6" in status.detail
    with pytest.raises(RequestError) as error:
        pipeline.run(None, "refused while it is down")
    assert error.value.kind == "unhealthy" and "next restart in" in str(error.value)
    _wait(lambda: _healthy_and_idle(pipeline), 60, "the layout worker back after the window")
    assert pipeline.run(None, "served again").finish_reason == "length"


# ----- the parent ----------------------------------------------------------------------------------

PARENT = """
import json, os, sys, time
from spava.config import load_config
from spava.runtime.pipeline import Pipeline
from spava.testing.faults import arm_fault
overrides = json.loads(sys.argv[1])
with Pipeline.from_config(load_config("configs/demo_cpu.yaml", overrides), is_quiet=True) as pipe:
    workers = sorted(pipe.scheduler.launcher.pids())
    print(json.dumps({"pid": os.getpid(), "workers": workers, "tmp": pipe._tmp}), flush=True)
    arm_fault(os.environ["SPAVA_FAULT_DIR"], "layout-sleep", "60")  # a request holds its frames in layout
    handles = [pipe.submit(sys.argv[2], f"question {k}") for k in range(3)]
    print(json.dumps({"submitted": len(handles)}), flush=True)
    for handle in handles:
        handle.exception()
"""


def _start_parent(dirs, shm, temp, flags) -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, TMPDIR=str(temp), SPAVA_FAULT_DIR=str(flags))
    overrides = json.dumps([*OVERRIDES, f"runtime.shm_dir={shm}"])
    process = subprocess.Popen([sys.executable, "-c", PARENT, overrides, str(dirs["video"])], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, text=True, start_new_session=True)
    info = json.loads(process.stdout.readline())
    assert json.loads(process.stdout.readline()) == {"submitted": 3}
    return process, info


def _owned(directory: Path, pid: int) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(f"spava-p{pid}-")]


@pytest.mark.timeout(600)
def test_parent_kill_leaves_files_the_next_pipeline_sweeps_and_sigterm_cleans_up(dirs, tmp_path):
    shm, temp, flags = tmp_path / "shm", tmp_path / "tmp", tmp_path / "flags"
    for path in (shm, temp, flags):
        path.mkdir()
    rng = random.Random("parent")
    first, info = _start_parent(dirs, shm, temp, flags)
    _wait(lambda: _owned(shm, info["pid"]), 60, "the held request's frames in shared memory")
    time.sleep(rng.uniform(0.0, 1.0))
    first.kill()
    first.wait(timeout=30)
    _wait(lambda: not any(is_process_alive(p) for p in info["workers"]), 15, "workers die with their parent")
    assert _owned(shm, info["pid"]) and _owned(temp, info["pid"]), "SIGKILL leaves files behind"
    live = shm / f"spava-{owner_tag('live0')}-r1-frames-00000000"  # a live owner's (ours): never swept
    live.write_bytes(b"")

    second, info2 = _start_parent(dirs, shm, temp, flags)  # sweeps at start
    assert not _owned(shm, info["pid"]) and not _owned(temp, info["pid"]), "the dead pipeline's files are swept"
    assert live.exists()
    _wait(lambda: _owned(shm, info2["pid"]), 60, "the second pipeline's request in shared memory")
    time.sleep(rng.uniform(0.0, 1.0))
    os.kill(second.pid, signal.SIGTERM)
    assert second.wait(timeout=60) == 128 + signal.SIGTERM
    _wait(lambda: not any(is_process_alive(p) for p in info2["workers"]), 15, "workers stopped")
    assert not _owned(shm, info2["pid"]) and not _owned(temp, info2["pid"]), "SIGTERM cleans up at once"
    assert os.listdir(shm) == [live.name]


@pytest.mark.timeout(600)
def test_a_stopped_server_fails_its_clients_requests_and_sigterm_stops_it_cleanly(dirs, tmp_path):
    shm, temp, flags = tmp_path / "shm", tmp_path / "tmp", tmp_path / "flags"
    for path in (shm, temp, flags):
        path.mkdir()
    address = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, TMPDIR=str(temp), SPAVA_FAULT_DIR=str(flags))
    server = subprocess.Popen([sys.executable, "-m", "spava.cli", "launch", *OVERRIDES, f"runtime.shm_dir={shm}",
                               f"runtime.control_address={address}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        assert "serving on" in server.stdout.readline()
        workers = _descendants(server.pid)
        client_config = load_config(None, ["runtime.heartbeat_interval_s=0.25", "runtime.heartbeat_timeout_s=3"])
        with Pipeline.connect(address, client_config) as client:
            assert client.run(None, "hello").finish_reason == "length"
            arm_fault(flags, "layout-sleep", "8")
            handle = client.submit(str(dirs["video"]), "held in layout")
            time.sleep(1.0)
            os.kill(server.pid, signal.SIGSTOP)
            start = time.monotonic()
            with pytest.raises(RequestError) as error:
                handle.result(timeout=30)
            assert error.value.kind == "unhealthy" and address in str(error.value)
            assert time.monotonic() - start < 10
            time.sleep(2.0)
            os.kill(server.pid, signal.SIGCONT)
            _wait(lambda: _healthy_and_idle(client), 60, "the server healthy again after SIGCONT")
            assert _descendants(server.pid) == workers, "no worker was restarted for the server's own pause"
            assert client.run(None, "still there?").finish_reason == "length"
            arm_fault(flags, "layout-sleep", "30")
            pending = client.submit(str(dirs["video"]), "in flight at SIGTERM")
            _wait(lambda: _owned(shm, server.pid), 60, "the request's frames in shared memory")
            os.kill(server.pid, signal.SIGTERM)
            assert server.wait(timeout=60) == 0
            with pytest.raises(RequestError) as error:
                pending.result(timeout=30)
            assert error.value.kind == "unhealthy"
        _wait(lambda: not any(is_process_alive(p) for p in workers), 15, "the server's workers stopped")
        assert not [name for name in os.listdir(shm) if name.startswith("spava-")]
        assert not [name for name in os.listdir(temp) if name.startswith("spava-")]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
