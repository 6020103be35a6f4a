"""Pipelines whose model ranks an external launcher starts (`spava.runtime.node`).

Two "hosts" in Linux network namespaces joined by a veth pair run one pipeline under torchrun's c10d
rendezvous: the head host through `spava launch --nnodes 2 --rdzv-endpoint ...` (which runs
torchrun), the other through the plain torchrun command. The head's rank 0 runs the scheduler, the
video / layout workers and model rank 0; the other host runs model rank 1 and fetches the head's
shared-memory files from its data server. A client on the second host is served across the
network; a client without the secret is refused; killing the second host mid-request fails that
request cleanly and the scheduler reports the lost host; stopping the head leaves no process in
either namespace and no shared-memory file. Skipped where this machine may not create namespaces.

The deepspeed launcher's environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
CROSS_RANK, CROSS_SIZE, LOCAL_SIZE and a `--local_rank=N` argument) is reproduced on one host without
deepspeed: the same entry point answers a request, and SIGTERM to the head ends both processes with
code 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from spava.runtime.launch import free_port

pytestmark = pytest.mark.slow  # starts spava processes (pipelines, CLI, servers)

HEAD, OTHER = ("spava-h0", "veth-h0", "10.231.0.1"), ("spava-h1", "veth-h1", "10.231.0.2")
RDZV_PORT, PORT, SECRET = 29640, 29650, "netns-test-secret"
# two model ranks, colocated: one per host, so the sequence-parallel prefill talks across the hosts
PIPELINE = ["encode.devices=[]", "prefill.devices=[cpu,cpu]", "runtime.heartbeat_timeout_s=4",
            "runtime.log_level=INFO", "runtime.startup_timeout_s=240"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def hosts():
    try:
        for name, _, _ in (HEAD, OTHER):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
            _ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot create network namespaces here (needs root / CAP_SYS_ADMIN): {error}")
    _ip("link", "add", HEAD[1], "type", "veth", "peer", "name", OTHER[1])
    for name, device, address in (HEAD, OTHER):
        _ip("link", "set", device, "netns", name)
        _ip("netns", "exec", name, "ip", "addr", "add", f"{address}/24", "dev", device)
        _ip("netns", "exec", name, "ip", "link", "set", device, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
    yield
    for name, _, _ in (HEAD, OTHER):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture
def shm_dir(tmp_path):
    """A private folder on tmpfs, so the test can tell that nothing was left there."""
    path = f"/dev/shm/spava-test-{os.getpid()}-{tmp_path.name}"
    os.makedirs(path)
    yield path
    leftovers = os.listdir(path)
    for name in leftovers:
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


def _in_host(host, command, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, GLOO_SOCKET_IFNAME=host[1], SPAVA_SECRET=SECRET, PYTHONUNBUFFERED="1")
    return subprocess.Popen(["ip", "netns", "exec", host[0], *command], env=env, text=True,
                            start_new_session=True, **kwargs)


def _head_by_spava_launch(shm: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "spava.cli", "launch", "--nnodes", "2", "--rdzv-endpoint",
               f"{HEAD[2]}:{RDZV_PORT}", "--rdzv-conf", "is_host=1", "--local-addr", HEAD[2], "--port", str(PORT),
               *PIPELINE,
               f"runtime.shm_dir={shm}"]
    # is_host: torchrun knows its own rendezvous address by the machine's name, not by a second interface
    return _in_host(HEAD, command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _other_by_torchrun(shm: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{HEAD[2]}:{RDZV_PORT}", "--local-addr", OTHER[2],
               "-m", "spava.runtime.node", "--port", str(PORT), *PIPELINE, f"runtime.shm_dir={shm}"]
    return _in_host(OTHER, command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _client_command(address: str, secret: str, mode: str) -> list[str]:
    return [sys.executable, "tests/_netns_client.py", address, secret, mode]


def _answer(process: subprocess.Popen, timeout: float) -> dict:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(process, signal.SIGKILL)
        raise
    return json.loads(output.strip().splitlines()[-1])


def _client(host, mode: str, secret: str = SECRET, timeout: float = 200) -> dict:
    command = _client_command(f"tcp://{HEAD[2]}:{PORT}", secret, mode)
    return _answer(_in_host(host, command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL), timeout)


def _wait_for(process: subprocess.Popen, text: str, timeout: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            threading.Thread(target=process.stdout.read, daemon=True).start()  # keep its pipe from filling up
            return lines
    raise AssertionError(f"{text!r} not seen; output:\n{''.join(lines[-40:])}")


def _stop(process: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 40) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _netns_pids(name: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout.split()


def _processes_naming(text: str) -> list[str]:
    """Command lines of the live processes whose arguments contain `text`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command and int(pid) != os.getpid():
            found.append(f"{pid}: {command}")
    return found


def _wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


def test_torchrun_across_two_hosts_and_a_lost_host(hosts, shm_dir):
    head = _head_by_spava_launch(shm_dir)
    other = _other_by_torchrun(shm_dir)
    try:
        lines = _wait_for(head, "serving on", 240)
        assert f"tcp://{HEAD[2]}:{PORT}" in lines[-1] and "2 node(s)" in lines[-1], lines[-1]
        served = _client(OTHER, "short")
        assert served == {"ok": True, "tokens": 2, "world_size": 2}, served
        # a client that lacks the secret is never answered: refused at its first contact, in bounded time
        refused = _client(OTHER, "short", secret="guess", timeout=60)
        assert refused["ok"] is False and refused["kind"] == "connection" and str(PORT) in refused["message"]
        long_request = _in_host(OTHER, _client_command(f"tcp://{HEAD[2]}:{PORT}", SECRET, "long"),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(3)
        _stop(other, signal.SIGKILL)  # the second host goes away mid-request: its agent, and with it rank 1
        failed = _answer(long_request, 60)
        assert failed["ok"] is False and failed["stage"] == "model" and failed["kind"] == "worker_died", failed
        # rank 0's collective sees the closed connection, or the scheduler the silence of node1's rank first
        assert "another model rank stopped answering" in failed["message"] or "node1" in failed["message"], failed
        time.sleep(5)  # runtime.heartbeat_timeout_s: the scheduler's own verdict on node1's silent rank
        status = _client(HEAD, "status")
        assert status["is_healthy"] is False and "lost host node1" in status["detail"], status
    finally:
        _stop(other, signal.SIGKILL)
        _stop(head)
    assert _wait_until(lambda: not _netns_pids(HEAD[0]) and not _netns_pids(OTHER[0]), 30), \
        (_netns_pids(HEAD[0]), _netns_pids(OTHER[0]))
    assert os.listdir(shm_dir) == []


def _deepspeed_environment(rank: int, master_port: int) -> dict[str, str]:
    """What deepspeed's per-node launcher sets for rank `rank` of 2 nodes with one process each."""
    return dict(os.environ, RANK=str(rank), LOCAL_RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(master_port), CROSS_RANK=str(rank), CROSS_SIZE="2", LOCAL_SIZE="1",
                SPAVA_SECRET=SECRET, PYTHONUNBUFFERED="1")


def test_deepspeed_environment_on_one_host(shm_dir):
    master_port, port = free_port(), free_port()
    command = [sys.executable, "-u", "-m", "spava.runtime.node", "--local_rank=0", "--port", str(port), *PIPELINE,
               f"runtime.shm_dir={shm_dir}"]
    head = subprocess.Popen(command, env=_deepspeed_environment(0, master_port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    rank = subprocess.Popen(command, env=_deepspeed_environment(1, master_port), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(head, "serving on", 240)
        client = subprocess.Popen(_client_command(f"tcp://127.0.0.1:{port}", SECRET, "short"), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        assert _answer(client, 200) == {"ok": True, "tokens": 2, "world_size": 2}
        head.send_signal(signal.SIGTERM)  # what the launcher forwards when it is stopped
        assert head.wait(timeout=60) == 0
        assert rank.wait(timeout=30) == 0  # told to exit by the head, not signalled
    finally:
        _stop(rank, signal.SIGKILL)
        _stop(head, signal.SIGKILL)
    def strays() -> list[str]:  # the head's workers name its control port; its fork server, its pid
        return _processes_naming(f":{port}") + _processes_naming(f"--parent-pid {head.pid}")

    assert _wait_until(lambda: not strays(), 20), strays()
    assert os.listdir(shm_dir) == []
