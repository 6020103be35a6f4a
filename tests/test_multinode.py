"""Two "hosts" in Linux network namespaces joined by a veth pair run one pipeline through the real
launcher (`spava launch --hostfile`): the head runs the scheduler, video/layout workers and the
encoder rank; the other host runs both prefill ranks. A client on the second host is served across
the network; killing the second host mid-request fails that request cleanly, and the scheduler
reports the lost host. Skipped where this machine may not create network namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

HEAD, OTHER = ("spava-h0", "veth-h0", "10.231.0.1"), ("spava-h1", "veth-h1", "10.231.0.2")
PORT, SECRET = 29650, "netns-test-secret"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def hosts():
    try:
        for name, _, _ in (HEAD, OTHER):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
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
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _in_host(host, command, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, GLOO_SOCKET_IFNAME=host[1], SPAVA_SECRET=SECRET, PYTHONUNBUFFERED="1")
    return subprocess.Popen(["ip", "netns", "exec", host[0], *command], env=env, text=True,
                            start_new_session=True, **kwargs)


def _launch(host, node_rank: int, hostfile: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "spava.cli", "launch", "--hostfile", hostfile, "--node-rank", str(node_rank),
               "--master-port", str(PORT), "runtime.heartbeat_timeout_s=4", "runtime.log_level=INFO",
               "runtime.startup_timeout_s=240"]
    return _in_host(host, command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _client(host, mode: str, secret: str = SECRET, timeout: float = 200) -> dict:
    command = [sys.executable, "tests/_netns_client.py", f"tcp://{HEAD[2]}:{PORT}", secret, mode]
    process = _in_host(host, command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(process, signal.SIGKILL)
        raise
    return json.loads(output.strip().splitlines()[-1])


def _wait_for(process: subprocess.Popen, text: str, timeout: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} not seen; output:\n{''.join(lines[-40:])}")


def _stop(process: subprocess.Popen, sig=signal.SIGTERM) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def test_pipeline_across_two_hosts_and_a_lost_host(hosts, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"{HEAD[2]} slots=1\n{OTHER[2]} slots=2\n")
    head = _launch(HEAD, 0, str(hostfile))
    other = _launch(OTHER, 1, str(hostfile))
    try:
        _wait_for(head, "serving on", 240)
        served = _client(OTHER, "short")
        assert served == {"ok": True, "tokens": 2, "world_size": 3}, served
        # a client that lacks the secret is never answered: refused at its first contact, in bounded time
        refused = _client(OTHER, "short", secret="guess", timeout=60)
        assert refused["ok"] is False and refused["kind"] == "connection" and str(PORT) in refused["message"]
        long_request = _in_host(OTHER, [sys.executable, "tests/_netns_client.py", f"tcp://{HEAD[2]}:{PORT}",
                                        SECRET, "long"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        time.sleep(3)
        _stop(other, signal.SIGKILL)  # the second host goes away mid-request
        output, _ = long_request.communicate(timeout=60)
        failed = json.loads(output.strip().splitlines()[-1])
        assert failed["ok"] is False and failed["stage"] == "model" and failed["kind"] == "worker_died", failed
        assert "node1" in failed["message"]
        status = _client(HEAD, "status")
        assert status["is_healthy"] is False and "lost host node1" in status["detail"], status
    finally:
        _stop(other)
        _stop(head)
