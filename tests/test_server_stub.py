"""The HTTP server over a stub pipeline (the app factory's seam): every error status, auth, health,
metrics, disconnects and the image path, on a real uvicorn server on a loopback port."""

from __future__ import annotations

import base64
import threading
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from _server_helpers import ServerThread, StubPipeline, check_stream, parse_sse  # noqa: E402
from spava.server.app import create_app  # noqa: E402
from spava.server.options import ServedModel, ServerOptions  # noqa: E402

SERVED = ServedModel("stub-model", "spava", "You are a helpful assistant.", has_vision=True)
QUESTION = [{"role": "user", "content": "What happens?"}]


def _serve(pipeline, **options):
    return ServerThread(create_app(pipeline, ServerOptions(**options), served=SERVED))


def _failing(kind: str, stage: str = "admission", after: list[str] | None = None):
    def behaviour(handle, video, prompt, kwargs):
        for delta in after or []:
            handle.stream.put(delta)
        handle.fail(stage, kind, f"{kind} happened")
    return behaviour


@pytest.mark.parametrize("kind, status, error_type", [
    ("bad_input", 400, "invalid_request_error"), ("overloaded", 429, "rate_limit_error"),
    ("unhealthy", 503, "service_unavailable_error"), ("timeout", 504, "timeout_error"),
    ("worker_died", 500, "server_error"), ("internal", 500, "server_error"), ("cancelled", 500, "server_error"),
])
def test_each_failure_kind_answers_its_status_as_openai_error_json(kind, status, error_type):
    with _serve(StubPipeline(_failing(kind)), retry_after_s=3) as server:
        for stream in (False, True):
            response = httpx.post(f"{server.base_url}/v1/chat/completions",
                                  json={"messages": QUESTION, "stream": stream})
            assert response.status_code == status
            assert response.json() == {"error": {"message": f"[admission] {kind} happened", "type": error_type,
                                                 "param": None, "code": kind}}
            assert (response.headers.get("retry-after") == "3") == (status == 429)


def test_openai_client_sees_status_errors_and_retry_after():
    openai = pytest.importorskip("openai")
    with _serve(StubPipeline(_failing("overloaded"))) as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.RateLimitError) as error:
            client.chat.completions.create(model="stub-model", messages=QUESTION)
        assert error.value.status_code == 429 and error.value.response.headers["retry-after"] == "1"


def test_failure_after_the_first_chunk_is_an_error_event_then_done():
    with _serve(StubPipeline(_failing("worker_died", "model", after=["Hel"]))) as server:
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json={"messages": QUESTION, "stream": True})
    events = parse_sse(response.text)
    assert response.status_code == 200 and len(events) == 3
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert events[1] == {"error": {"message": "[model] worker_died happened", "type": "server_error", "param": None,
                                   "code": "worker_died"}}


def test_streaming_chunks_and_usage_follow_openai():
    pipeline = StubPipeline()
    with _serve(pipeline) as server:
        body = {"model": "stub-model", "messages": QUESTION, "stream": True, "stream_options": {"include_usage": True},
                "max_tokens": 3, "temperature": 0.7, "stop": "END", "fps": 1.0}
        response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    text, finish_reason, usage = check_stream(parse_sse(response.text), "stub-model", include_usage=True)
    assert (text, finish_reason) == ("Hello!", "length")
    assert usage == {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23,
                     "prompt_tokens_details": {"visual_tokens": 7}}
    video, prompt, kwargs = pipeline.calls[0]
    assert video is None and prompt == "What happens?" and kwargs["stream"] is True
    assert (kwargs["max_new_tokens"], kwargs["temperature"], kwargs["stop_strings"]) == (3, 0.7, ["END"])
    assert kwargs["video_options"] == {"fps": 1.0}


def test_api_key_is_required_on_v1_only():
    with _serve(StubPipeline(), api_key="s3cret") as server:
        url = f"{server.base_url}/v1/chat/completions"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            response = httpx.post(url, json={"messages": QUESTION}, headers=headers)
            assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
        ok = httpx.post(url, json={"messages": QUESTION}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "Hello!"
        assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_validation_errors_unknown_routes_and_large_bodies_are_openai_errors():
    with _serve(StubPipeline(), max_media_bytes=1000) as server:
        url = f"{server.base_url}/v1/chat/completions"
        wrong_type = httpx.post(url, json={"messages": QUESTION, "max_tokens": "many"})
        assert wrong_type.status_code == 400 and wrong_type.json()["error"]["param"] == "max_tokens"
        not_json = httpx.post(url, content=b"{oops", headers={"content-type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
        assert httpx.post(url, json={"messages": []}).json()["error"]["param"] == "messages"
        missing = httpx.get(f"{server.base_url}/v1/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
        model = httpx.get(f"{server.base_url}/v1/models/other")
        assert model.status_code == 404 and model.json()["error"]["code"] == "model_not_found"
        huge = httpx.post(url, json={"messages": [{"role": "user", "content": "x" * (2 << 20)}]})
        assert huge.status_code == 413 and "larger than the server's limit" in huge.json()["error"]["message"]


def test_health_and_metrics_follow_the_pipeline_status():
    healthy = StubPipeline()
    with _serve(healthy) as server:
        assert httpx.get(f"{server.base_url}/health").json()["status"] == "ok"
        httpx.post(f"{server.base_url}/v1/chat/completions", json={"messages": QUESTION, "stream": True})
        httpx.post(f"{server.base_url}/v1/chat/completions", json={"messages": QUESTION, "model": "nope"})
        metrics = httpx.get(f"{server.base_url}/metrics")
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    for line in ('spava_server_requests_total{outcome="ok"} 1.0',
                 'spava_server_requests_total{outcome="not_found"} 1.0',
                 "spava_time_to_first_token_seconds_count 1.0", "spava_e2e_request_latency_seconds_count 1.0",
                 "spava_time_per_output_token_seconds_count 1.0", "spava_request_queue_time_seconds_count 1.0",
                 'spava_request_stage_seconds_count{stage="prefill"} 1.0', "spava_generation_tokens_total 3.0",
                 "spava_num_requests_running 0.0", 'spava_num_requests_waiting{stage="model"} 2.0', "spava_healthy 1.0",
                 "spava_pipeline_num_requests 3.0"):
        assert line in text, line
    with _serve(StubPipeline(is_healthy=False)) as server:
        response = httpx.get(f"{server.base_url}/health")
        assert response.status_code == 503 and response.json()["error"]["message"] == "workers kept dying"
        assert "spava_healthy 0.0" in httpx.get(f"{server.base_url}/metrics").text


def _stalls_mid_answer(handle, video, prompt, kwargs):
    handle.stream.put("first")  # a stream that started and then waits (the stub's cancel() ends it)


def _stalls_before_answering(handle, video, prompt, kwargs):
    pass  # no token yet (a long prefill): only the stub's cancel() ends it


def _wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize("stream, behaviour", [(True, _stalls_mid_answer), (True, _stalls_before_answering),
                                               (False, _stalls_before_answering)])
def test_client_disconnect_cancels_its_request(stream, behaviour):
    pipeline = StubPipeline(behaviour)
    with _serve(pipeline) as server:
        client = httpx.Client(timeout=httpx.Timeout(10.0, read=0.5))
        with pytest.raises(httpx.ReadTimeout):
            with client.stream("POST", f"{server.base_url}/v1/chat/completions",
                               json={"messages": QUESTION, "stream": stream}) as response:
                for _ in response.iter_lines():
                    pass
        client.close()  # drops the connection
        assert _wait_for(lambda: pipeline.handles and pipeline.handles[0].cancel_count >= 1)
        metrics = httpx.get(f"{server.base_url}/metrics").text
        assert 'spava_server_requests_total{outcome="cancelled"} 1.0' in metrics
        assert "spava_num_requests_running 0.0" in metrics


def test_image_url_reaches_the_pipeline_as_image():
    png = base64.b64encode(b"\x89PNG-bytes").decode()
    pipeline = StubPipeline()
    with _serve(pipeline) as server:
        content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                   {"type": "text", "text": "What is shown?"}]
        response = httpx.post(f"{server.base_url}/v1/chat/completions",
                              json={"messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200
    video, prompt, kwargs = pipeline.calls[0]
    assert video is None and kwargs["image"] == b"\x89PNG-bytes" and prompt == "What is shown?"


def test_requests_are_answered_concurrently():
    """A request waiting on the pipeline does not hold the event loop: a later one finishes first."""
    release = threading.Event()

    def behaviour(handle, video, prompt, kwargs):
        if prompt == "slow":
            threading.Thread(target=lambda: release.wait(10) and handle.finish(["slow"]), daemon=True).start()
        else:
            handle.finish(["fast"])
            release.set()

    with _serve(StubPipeline(behaviour)) as server:
        url = f"{server.base_url}/v1/chat/completions"
        slow = {}
        thread = threading.Thread(target=lambda: slow.update(r=httpx.post(url, json={
            "messages": [{"role": "user", "content": "slow"}]}, timeout=20)))
        thread.start()
        time.sleep(0.3)
        fast = httpx.post(url, json={"messages": [{"role": "user", "content": "fast"}]}, timeout=20)
        thread.join(20)
    assert fast.json()["choices"][0]["message"]["content"] == "fast"
    assert slow["r"].json()["choices"][0]["message"]["content"] == "slow"
