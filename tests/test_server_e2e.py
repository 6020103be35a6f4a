"""The HTTP server in front of the real CPU demo pipeline (tiny random Qwen2.5-VL, real workers):
the `openai` client, raw HTTP, refusals, client disconnects (shared memory freed) and a bounded load.

One pipeline serves the module; its `runtime.shm_dir` is a private temp folder, so "nothing left"
means no `spava-*` file in it. The video stage is the fault-injecting one, so a test can hold a
request in decoding while its client goes away.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from _server_helpers import ServerThread, check_stream, parse_sse  # noqa: E402
from spava.config import load_config  # noqa: E402
from spava.media.synthetic import write_synthetic_video  # noqa: E402
from spava.runtime.pipeline import Pipeline  # noqa: E402
from spava.server.app import create_app  # noqa: E402
from spava.server.options import ServerOptions  # noqa: E402
from spava.testing.faults import FAULT_DIR_ENV, arm_fault  # noqa: E402

MODEL = "qwen2_5_vl-tiny"
MAX_MEDIA_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("faults")
    previous = os.environ.get(FAULT_DIR_ENV)
    os.environ[FAULT_DIR_ENV] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop(FAULT_DIR_ENV, None)
    else:
        os.environ[FAULT_DIR_ENV] = previous


@pytest.fixture(scope="module")
def shm_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shm")


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("media")
    write_synthetic_video(directory / "clip.mp4", num_frames=8, height=64, width=96, fps=8.0)
    return directory


@pytest.fixture(scope="module")
def pipeline(fault_dir, shm_dir):
    overrides = [f"runtime.shm_dir={shm_dir}", "runtime.log_level=WARNING", "runtime.request_timeout_s=120",
                 "stages.video=spava.testing.faults:FaultyVideo", "decode.max_new_tokens=4"]
    with Pipeline.from_config(load_config("configs/demo_cpu.yaml", overrides), is_quiet=True) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def server(pipeline, media_dir):
    options = ServerOptions(allowed_local_media_path=str(media_dir), max_media_bytes=MAX_MEDIA_BYTES)
    with ServerThread(create_app(pipeline, options)) as running:
        yield running


def _video_parts(url: str, question: str = "What happens in this video?") -> list[dict]:
    return [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}]


def _data_url(path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(open(path, "rb").read()).decode()


def _shm_files(shm_dir) -> list[str]:
    return sorted(name for name in os.listdir(shm_dir) if name.startswith("spava-"))


def _wait_until_empty(shm_dir, timeout_s: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while _shm_files(shm_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _shm_files(shm_dir)


def _outcomes(server) -> dict[str, float]:
    """spava_server_requests_total by outcome, from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(httpx.get(f"{server.base_url}/metrics").text)
    family = next(f for f in families if f.name == "spava_server_requests")
    return {s.labels["outcome"]: s.value for s in family.samples if s.name == "spava_server_requests_total"}


def _client(server) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_openai_client_answers_about_a_local_video(server, media_dir, shm_dir):
    client = _client(server)
    assert [model.id for model in client.models.list().data] == [MODEL]
    answer = client.chat.completions.create(model=MODEL, max_tokens=3, messages=[
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": _video_parts(f"file://{media_dir}/clip.mp4")}])
    assert answer.object == "chat.completion" and answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason in ("length", "stop") and answer.usage.completion_tokens <= 3
    visual_tokens = answer.usage.prompt_tokens_details.visual_tokens
    assert answer.usage.prompt_tokens > visual_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert not _wait_until_empty(shm_dir)


def test_openai_client_streams_an_answer_about_a_data_url_video(server, media_dir, pipeline, shm_dir):
    client = _client(server)
    chunks = list(client.chat.completions.create(
        model=MODEL, max_tokens=5, stream=True, stream_options={"include_usage": True}, temperature=0.0,
        messages=[{"role": "user", "content": _video_parts(_data_url(media_dir / "clip.mp4"))}]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason in ("length", "stop") and chunks[-1].choices == []
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    direct = pipeline.run(open(media_dir / "clip.mp4", "rb").read(), "What happens in this video?", max_new_tokens=5)
    assert text == direct.text and chunks[-1].usage.completion_tokens == len(direct.token_ids)
    assert chunks[-1].usage.prompt_tokens == direct.num_prompt_tokens
    assert not _wait_until_empty(shm_dir)


def test_raw_http_text_question_and_stream(server):
    url = f"{server.base_url}/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 4}
    answer = httpx.post(url, json=body, timeout=60).json()
    assert answer["usage"]["prompt_tokens_details"]["visual_tokens"] == 0
    streamed = httpx.post(url, json={**body, "stream": True}, timeout=60)
    text, finish_reason, _ = check_stream(parse_sse(streamed.text), MODEL)
    assert text == answer["choices"][0]["message"]["content"]
    assert finish_reason == answer["choices"][0]["finish_reason"]


def test_refusals_by_the_server_and_the_pipeline(server, media_dir, shm_dir):
    url = f"{server.base_url}/v1/chat/completions"
    video = _video_parts(_data_url(media_dir / "clip.mp4"))
    odd_frames = httpx.post(url, json={"messages": [{"role": "user", "content": video}], "num_frames": 3}, timeout=60)
    assert odd_frames.status_code == 400 and odd_frames.json()["error"]["code"] == "bad_input"
    assert "num_frames=3 must be a multiple" in odd_frames.json()["error"]["message"]
    assert not _wait_until_empty(shm_dir), "a refused request's video must not stay in shared memory"
    unknown = httpx.post(url, json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    method = httpx.post(url, json={"messages": [{"role": "user", "content": "hi"}], "attention_method": "full"})
    assert method.status_code == 400 and "it runs 'spava'" in method.json()["error"]["message"]
    big = "data:video/mp4;base64," + base64.b64encode(b"\0" * (MAX_MEDIA_BYTES + 1)).decode()
    too_large = httpx.post(url, json={"messages": [{"role": "user", "content": _video_parts(big)}]}, timeout=60)
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "media_too_large"
    outside = httpx.post(url, json={"messages": [{"role": "user", "content": _video_parts("file:///etc/hostname")}]})
    assert outside.status_code == 403 and "outside the folder" in outside.json()["error"]["message"]
    assert not _shm_files(shm_dir)


def test_api_key_on_the_real_pipeline(pipeline):
    with ServerThread(create_app(pipeline, ServerOptions(api_key="k-123"))) as keyed:
        client = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        client = openai.OpenAI(base_url=f"{keyed.base_url}/v1", api_key="k-123", max_retries=0, timeout=60)
        answer = client.chat.completions.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert answer.usage.completion_tokens <= 2


def test_disconnect_mid_stream_cancels_and_frees_shared_memory(server, media_dir, shm_dir):
    url = f"{server.base_url}/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": _video_parts(_data_url(media_dir / "clip.mp4"))}],
            "stream": True, "max_tokens": 5000}
    before = _outcomes(server)
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", url, json=body) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]  # 3 events and their blank lines: mid-answer
            assert _shm_files(shm_dir), "the request holds shared memory while it runs"
    assert all(line.startswith("data: {") for line in received[::2])
    assert not _wait_until_empty(shm_dir)  # 5000 tokens would take minutes: only a cancel frees it this soon
    after = _outcomes(server)
    assert after.get("cancelled", 0) == before.get("cancelled", 0) + 1 and after.get("ok") == before.get("ok")


def test_disconnect_while_waiting_cancels_a_non_streamed_request(server, media_dir, shm_dir, fault_dir, pipeline):
    arm_fault(fault_dir, "video-sleep", "3")  # the request sits in the video stage, its bytes in shared memory
    body = {"messages": [{"role": "user", "content": _video_parts(_data_url(media_dir / "clip.mp4"))}]}
    before = _outcomes(server)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
    deadline = time.monotonic() + 30
    while _outcomes(server).get("cancelled", 0) == before.get("cancelled", 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = _outcomes(server)
    assert after.get("cancelled", 0) == before.get("cancelled", 0) + 1 and after.get("ok") == before.get("ok")
    assert pipeline.status().num_inflight == 0
    assert not _wait_until_empty(shm_dir)


def test_image_url_with_the_real_pipeline(server, shm_dir):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    answer = _client(server).chat.completions.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What colour is it?"}]}])
    assert answer.usage.prompt_tokens_details.visual_tokens > 0
    assert not _wait_until_empty(shm_dir)


@pytest.mark.slow
def test_load_32_concurrent_streams_200_requests(server, pipeline, shm_dir):
    """200 streamed requests, 32 at a time: every stream well formed, none lost, none mixed up."""
    prompts = [f"Question number {i}: what comes next?" for i in range(8)]
    expected = {p: pipeline.run(None, p, max_new_tokens=3) for p in prompts}  # greedy: the same answer each time
    url = f"{server.base_url}/v1/chat/completions"

    async def one(client, semaphore, index):
        prompt = prompts[index % len(prompts)]
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 3, "stream": True,
                "stream_options": {"include_usage": True}}
        async with semaphore:
            response = await client.post(url, json=body)
        assert response.status_code == 200, response.text
        events = parse_sse(response.text)
        text, finish_reason, usage = check_stream(events, MODEL, include_usage=True)
        reference = expected[prompt]
        assert text == reference.text and usage["completion_tokens"] == len(reference.token_ids)
        return events[0]["id"]

    async def run_all():
        semaphore = asyncio.Semaphore(32)
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            return await asyncio.gather(*(one(client, semaphore, i) for i in range(200)))

    ids = asyncio.run(run_all())
    assert len(ids) == 200 and len(set(ids)) == 200
    status = pipeline.status()
    assert status.num_inflight == 0 and status.is_healthy
    assert not _shm_files(shm_dir)


def test_server_over_a_connected_pipeline(pipeline):
    """`spava serve --connect`: the app in front of `Pipeline.connect(address)` of a running pipeline."""
    config = load_config("configs/demo_cpu.yaml", [f"runtime.shm_dir={pipeline.config.runtime.shm_dir}"])
    with Pipeline.connect(pipeline.control_address, config) as connected:
        with ServerThread(create_app(connected, ServerOptions())) as remote:
            answer = httpx.post(f"{remote.base_url}/v1/chat/completions", timeout=60, json={
                "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).json()
            assert answer["usage"]["completion_tokens"] <= 2 and answer["spava"]["method"] == "spava"
            assert httpx.get(f"{remote.base_url}/health").status_code == 200
