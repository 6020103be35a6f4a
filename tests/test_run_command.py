"""`spava run`: bad input fails at once with one clean line (and a JSON error object with --json),
before any worker starts; the demo is the same by default or from configs/demo_cpu.yaml; --json
--stream prints JSON lines; http(s) videos are downloaded within limits; SIGTERM cleans up."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spava.cli import main
from spava.media.synthetic import write_synthetic_video
from spava.run_command import RunFailure, fetch_url

pytestmark = pytest.mark.slow  # starts spava processes (pipelines, CLI, servers)

ROOT = Path(__file__).resolve().parent.parent


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["run", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--document", "/no/such/file.txt"], "document file '/no/such/file.txt' does not exist"),
        (["--document", "/tmp"], "document path '/tmp' is a directory"),
        (["--video", "/tmp"], "video path '/tmp' is a directory"),
        (["--video", "/no/such/video.mp4"], "video file '/no/such/video.mp4' does not exist"),
        (["--config", "/tmp"], "config file '/tmp' is a directory"),
        (["--max-new-tokens", "9000"], "--max-new-tokens 9000 is over decode.max_allowed_new_tokens=8192"),
        (["--prompt", "  "], "the prompt is empty"),
        (["prefill.attention.method=nope"], "prefill.attention.method: unknown method 'nope'"),
    ],
)
def test_bad_input_is_one_line_before_anything_starts(capsys, argv, message):
    start = time.monotonic()
    code, out, err = _run(capsys, *argv)
    assert code == 2 and err.strip() == f"spava run: {err.strip().removeprefix('spava run: ')}"
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - start < 10  # no worker was started
    code, out, err = _run(capsys, *argv, "--json")
    error = json.loads(out)["error"]
    assert code == 2 and error["kind"] == "bad_input" and message in error["message"]


def test_a_yaml_list_is_not_a_config(capsys, tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- video\n")
    code, _, err = _run(capsys, "--config", str(path))
    assert code == 2 and "must be a mapping of sections" in err and "Traceback" not in err


def test_zero_new_tokens_is_refused_not_ignored(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--max-new-tokens", "0"])
    assert exit_.value.code == 2 and "--max-new-tokens: must be >= 1, got 0" in capsys.readouterr().err


def test_connect_to_nothing_fails_fast_with_the_address(capsys):
    from spava.runtime.launch import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    code, out, err = _run(capsys, "--connect", address, "runtime.connect_timeout_s=1", "--json")
    assert code == 1 and address in err and json.loads(out)["error"]["kind"] == "unhealthy"
    assert time.monotonic() - start < 10


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_root(tmp_path):
    video = write_synthetic_video(tmp_path / "clip.mp4", num_frames=8, height=64, width=96, fps=8.0)
    handler = lambda *args, **kwargs: _Files(*args, directory=str(tmp_path), **kwargs)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Path(video)
    server.shutdown()
    server.server_close()


def test_urls_are_downloaded_within_limits(http_root, tmp_path):
    base, video = http_root
    out = tmp_path / "out"
    out.mkdir()
    path = fetch_url(f"{base}/clip.mp4", str(out), max_bytes=10 << 20, timeout_s=10)
    assert Path(path).read_bytes() == video.read_bytes()
    with pytest.raises(RunFailure, match="over --max-media-bytes=100"):
        fetch_url(f"{base}/clip.mp4", str(out), max_bytes=100, timeout_s=10)
    with pytest.raises(RunFailure, match="could not download video .*missing.mp4: HTTP 404"):
        fetch_url(f"{base}/missing.mp4", str(out), max_bytes=10 << 20, timeout_s=10)


@pytest.mark.slow
def test_demo_config_file_runs_the_demo_and_json_stream_prints_lines(tmp_path):
    command = [sys.executable, "-m", "spava.cli", "run", "--config", "configs/demo_cpu.yaml", "--json", "--stream",
               "--max-new-tokens", "3", f"runtime.shm_dir={tmp_path}"]
    output = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert output.returncode == 0, output.stderr
    lines = [json.loads(line) for line in output.stdout.splitlines()]
    assert [list(line) for line in lines] == [["delta"]] * 3 + [["result"]]
    result = lines[-1]["result"]
    assert "".join(line["delta"] for line in lines[:-1]) == result["text"]
    assert result["num_frames"] > 0 and result["is_random_weights"] is True  # the demo video, as with no --config
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_a_url_video_is_answered(capsys, http_root, tmp_path):
    base, _ = http_root
    code, out, err = _run(capsys, "--video", f"{base}/clip.mp4", "--json", "--max-new-tokens", "2",
                          f"runtime.shm_dir={tmp_path}")
    assert code == 0, err
    assert json.loads(out)["num_frames"] > 0


@pytest.mark.slow
def test_sigterm_mid_request_cleans_up_and_exits_143(tmp_path):
    shm, temp, flags = tmp_path / "shm", tmp_path / "tmp", tmp_path / "flags"
    for path in (shm, temp, flags):
        path.mkdir()
    (flags / "layout-sleep").write_text("60")  # the request waits in layout, its frames in shared memory
    env = dict(os.environ, TMPDIR=str(temp), SPAVA_FAULT_DIR=str(flags))
    command = [sys.executable, "-m", "spava.cli", "run", "--max-new-tokens", "2", f"runtime.shm_dir={shm}",
               "stages.layout=spava.testing.faults:FaultyLayout"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not any(name.startswith("spava-") for name in os.listdir(shm)):
            assert time.monotonic() < deadline and process.poll() is None, "no request in flight"
            time.sleep(0.2)
        with open(f"/proc/{process.pid}/task/{process.pid}/children") as handle:
            children = [int(pid) for pid in handle.read().split()]
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143 and "spava run: terminated (SIGTERM)" in err and "Traceback" not in err
    assert not os.listdir(shm) and not [name for name in os.listdir(temp) if name.startswith("spava-")]
    from spava.comm.shm import is_process_alive

    assert children and not any(is_process_alive(pid) for pid in children)
