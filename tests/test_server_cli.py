"""`spava serve` on the command line: light imports, the missing-extra message, a real server process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from spava.cli import build_parser, main

pytestmark = pytest.mark.slow  # starts spava processes (pipelines, CLI, servers)


def test_spava_and_its_cli_do_not_import_the_server_stack():
    code = ("import sys, spava, spava.cli; spava.cli.build_parser(); heavy = [m for m in ('fastapi', 'uvicorn', "
            "'starlette', 'httpx', 'pydantic', 'prometheus_client') if m in sys.modules]; print(','.join(heavy))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert output == ""


def test_serve_without_the_extra_names_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # makes `import fastapi` fail as if not installed
    assert main(["serve"]) == 2
    assert 'pip install "spava[serve]"' in capsys.readouterr().err


def test_serve_arguments_parse(tmp_path):
    args = build_parser().parse_args(["serve", "--config", "configs/demo_cpu.yaml", "decode.max_new_tokens=8",
                                      "--port", "0", "--api-key", "k", "--allowed-local-media-path", str(tmp_path),
                                      "--served-model-name", "demo", "--max-media-bytes", "1000",
                                      "--media-fetch-timeout", "2.5", "--allowed-media-domains", "a.test,b.test"])
    assert (args.config, args.overrides, args.port, args.api_key) == ("configs/demo_cpu.yaml",
                                                                      ["decode.max_new_tokens=8"], 0, "k")
    assert (args.max_media_bytes, args.media_fetch_timeout) == (1000, 2.5)
    assert args.host == "127.0.0.1" and args.connect is None
    from spava.server.run import options_from_args

    options = options_from_args(args)
    assert options.allowed_media_domains == ("a.test", "b.test") and options.api_key == "k"
    assert options.served_model_name == "demo" and options.max_media_bytes == 1000
    assert options.allowed_local_media_path == str(tmp_path.resolve())


@pytest.mark.slow
def test_spava_serve_process_answers_and_stops_on_sigint(tmp_path):
    """The real command: the CPU demo pipeline, a free port, the API key from $SPAVA_API_KEY."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    environment = {**os.environ, "SPAVA_API_KEY": "env-key"}
    command = [sys.executable, "-m", "spava.cli", "serve", "--port", "0", "--served-model-name", "demo",
               f"runtime.shm_dir={tmp_path}", "runtime.log_level=WARNING", "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    try:
        ready = ""
        deadline = time.monotonic() + 300
        while "ready at" not in ready and time.monotonic() < deadline and process.poll() is None:
            ready = process.stdout.readline()
        match = re.search(r"ready at (http://127\.0\.0\.1:\d+/v1)", ready)
        assert match, f"no ready line; last output: {ready!r}"
        base = match.group(1)
        headers = {"Authorization": "Bearer env-key"}
        assert httpx.get(f"{base}/models", headers=headers).json()["data"][0]["id"] == "demo"
        answer = httpx.post(f"{base}/chat/completions", headers=headers, timeout=60, json={
            "model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] <= 2
        assert httpx.post(f"{base}/chat/completions", json={"messages": []}).status_code == 401
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    assert not [name for name in os.listdir(tmp_path) if name.startswith("spava-")]
