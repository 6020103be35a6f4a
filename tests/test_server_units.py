"""The HTTP server's pure parts: request translation, media URL rules, error mapping (no server)."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from spava.runtime.pipeline import RequestError  # noqa: E402
from spava.server.errors import KIND_STATUS, APIError, from_request_error, validation_error  # noqa: E402
from spava.server.media import MediaRef, MediaResolver  # noqa: E402
from spava.server.options import ServedModel, ServerOptions, model_id_from_config  # noqa: E402
from spava.server.protocol import ChatCompletionRequest  # noqa: E402
from spava.server.translate import to_submission  # noqa: E402

SERVED = ServedModel("m", "spava", "You are a helpful assistant.", has_vision=True)


def _request(content="What happens?", **fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": content}], **fields)


def _refusal(request, served=SERVED) -> APIError:
    with pytest.raises(APIError) as error:
        to_submission(request, served)
    return error.value


def test_sampling_and_video_options_map_to_pipeline_names():
    submission = to_submission(_request(model="m", max_tokens=7, temperature=0.5, top_p=0.9, top_k=3, seed=11,
                                        stop="END", stop_token_ids=[5], fps=1.5, max_frames=16, max_pixels=50000,
                                        start_time=1.0, end_time=9.0, attention_method="spava", user="u1"), SERVED)
    assert submission.sampling == {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 3, "seed": 11,
                                   "stop_strings": ["END"], "stop_token_ids": [5]}
    assert submission.video_options == {"fps": 1.5, "max_frames": 16, "max_pixels": 50000, "start_time": 1.0,
                                        "end_time": 9.0}
    assert to_submission(_request(max_completion_tokens=3, stop=["a", "b"]), SERVED).sampling == {
        "max_new_tokens": 3, "stop_strings": ["a", "b"]}
    assert to_submission(_request(document="A long text."), SERVED).document == "A long text."


def test_num_frames_turns_the_default_fps_off_and_media_io_kwargs_is_read():
    assert to_submission(_request(num_frames=8), SERVED).video_options == {"num_frames": 8, "fps": None}
    lmms_eval = _request(media_io_kwargs={"video": {"num_frames": 16}})
    assert to_submission(lmms_eval, SERVED).video_options == {"num_frames": 16, "fps": None}
    assert _refusal(_request(media_io_kwargs={"audio": {}})).param == "media_io_kwargs"


def test_text_parts_join_and_system_text_is_merged_unless_it_is_the_pipelines():
    content = [{"type": "text", "text": "First line."}, {"type": "video_url", "video_url": {"url": "file:///v.mp4"}},
               {"type": "text", "text": "Second line?"}]
    request = ChatCompletionRequest(messages=[{"role": "system", "content": "You are a helpful assistant."},
                                              {"role": "user", "content": content}])
    submission = to_submission(request, SERVED)
    assert submission.prompt == "First line.\nSecond line?"
    assert submission.media == MediaRef("video", "file:///v.mp4", "messages[1].content[1].video_url.url")
    custom = ChatCompletionRequest(messages=[{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                                             {"role": "user", "content": "Why?"}])
    assert to_submission(custom, SERVED).prompt == "Be brief.\n\nWhy?"


@pytest.mark.parametrize("fields, param, words", [
    (dict(n=2), "n", "n=2 is not supported"),
    (dict(logprobs=True), "logprobs", "logprobs=True"),
    (dict(tools=[{"type": "function"}]), "tools", "not supported"),
    (dict(response_format={"type": "json_object"}), "response_format", "not supported"),
    (dict(frequency_penalty=0.5), "frequency_penalty", "not supported"),
    (dict(best_of=3), "best_of", "unknown or unsupported field 'best_of'"),
    (dict(attention_method="full"), "attention_method", "per-request attention methods are not supported by this "
                                                        "server; it runs 'spava'"),
    (dict(max_tokens=3, max_completion_tokens=4), "max_tokens", "differ"),
    (dict(stream_options={"include_usage": True}), "stream_options", "needs stream=true"),
])
def test_unsupported_fields_are_refused_by_name(fields, param, words):
    error = _refusal(_request(**fields))
    assert error.status == 400 and error.param == param and words in error.message


def test_harmless_openai_fields_are_accepted():
    request = _request(n=1, logprobs=False, tools=[], tool_choice="none", response_format={"type": "text"},
                       presence_penalty=0, frequency_penalty=0.0, logit_bias={}, parallel_tool_calls=True,
                       store=False, metadata={"a": "b"}, modalities=["text"])
    assert to_submission(request, SERVED).prompt == "What happens?"


def test_message_shapes_that_cannot_be_answered_are_refused():
    two_videos = [{"type": "video_url", "video_url": {"url": "file:///a.mp4"}},
                  {"type": "image_url", "image_url": {"url": "file:///b.png"}}, {"type": "text", "text": "?"}]
    error = _refusal(_request(two_videos))
    assert error.param == "messages[0].content[1].image_url.url"
    assert "one video or one image per request" in error.message
    assert _refusal(_request([{"type": "input_audio", "input_audio": {}}])).param == "messages[0].content[0].type"
    assert _refusal(_request([{"type": "video_url", "video_url": {"url": "file:///a.mp4"}}])).code == "empty_prompt"
    turns = ChatCompletionRequest(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                            {"role": "user", "content": "c"}])
    assert _refusal(turns).param == "messages[1].role"
    assert _refusal(_request(model="other")).status == 404
    text_only = ServedModel("t", "spava", "", has_vision=False)
    video = [{"type": "video_url", "video_url": {"url": "file:///a.mp4"}}, {"type": "text", "text": "?"}]
    assert "reads text only" in _refusal(_request(video), text_only).message


def test_every_failure_kind_has_its_status():
    expected = {"bad_input": 400, "overloaded": 429, "unhealthy": 503, "timeout": 504, "cancelled": 500,
                "worker_died": 500, "internal": 500}
    assert {kind: status for kind, (status, _) in KIND_STATUS.items()} == expected
    error = from_request_error(RequestError("r", "admission", "overloaded", "queue full"), retry_after_s=2)
    assert error.status == 429 and error.headers == {"Retry-After": "2"} and error.code == "overloaded"
    assert from_request_error(RequestError("r", "model", "something_new", "?"), 1).status == 500
    body = validation_error([{"loc": ("body", "messages", 0, "role"), "msg": "bad role", "type": "x"}]).body()
    assert body == {"error": {"message": "messages[0].role: bad role", "type": "invalid_request_error",
                              "param": "messages[0].role", "code": "invalid_value"}}


def test_model_id_comes_from_the_model_folder_else_family_and_size(tmp_path):
    from spava.config import load_config

    assert model_id_from_config(load_config()) == "qwen2_5_vl-tiny"
    folder = tmp_path / "Qwen2.5-VL-7B-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "qwen2_5_vl", "vision_config": {}}')
    assert model_id_from_config(load_config(None, [f"model.path={folder}/"])) == "Qwen2.5-VL-7B-Instruct"


# ----- media URLs ---------------------------------------------------------------------------------


def _resolve(options: ServerOptions, url: str, kind: str = "video", transport=None):
    async def go():
        resolver = MediaResolver(options, transport=transport)
        try:
            return await resolver.resolve(MediaRef(kind, url, "p"))
        finally:
            await resolver.aclose()

    return asyncio.run(go())


def _media_error(options: ServerOptions, url: str, kind: str = "video", transport=None) -> APIError:
    with pytest.raises(APIError) as error:
        _resolve(options, url, kind, transport)
    return error.value


def test_file_urls_only_inside_the_allowed_folder(tmp_path):
    allowed, outside = tmp_path / "media", tmp_path / "secret"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "clip.mp4").write_bytes(b"video")
    (outside / "key.mp4").write_bytes(b"secret")
    os.symlink(outside / "key.mp4", allowed / "link.mp4")
    options = ServerOptions(allowed_local_media_path=str(allowed))
    assert _resolve(options, f"file://{allowed}/clip.mp4").path == str((allowed / "clip.mp4").resolve())
    for escape in (f"file://{allowed}/../secret/key.mp4", f"file://{allowed}/link.mp4", f"file://{outside}/key.mp4"):
        error = _media_error(options, escape)
        assert error.status == 403 and "outside the folder" in error.message, escape
    assert _media_error(options, f"file://{allowed}/missing.mp4").status == 400
    assert _media_error(options, "file://otherhost/clip.mp4").status == 400
    refused = _media_error(ServerOptions(), f"file://{allowed}/clip.mp4")
    assert refused.status == 403 and "--allowed-local-media-path" in refused.message


def test_data_urls_need_base64_the_right_media_type_and_fit_the_limit():
    options = ServerOptions(max_media_bytes=100)
    payload = base64.b64encode(b"\x00video-bytes").decode()
    assert _resolve(options, f"data:video/mp4;base64,{payload}").data == b"\x00video-bytes"
    assert _resolve(options, f"data:image/png;base64,{payload}", "image").data == b"\x00video-bytes"
    assert "video/* media type" in _media_error(options, f"data:image/png;base64,{payload}").message
    assert "base64" in _media_error(options, "data:video/mp4,rawbytes").message
    assert "not valid base64" in _media_error(options, "data:video/mp4;base64,@@@@").message
    too_large = base64.b64encode(b"x" * 101).decode()
    assert _media_error(options, f"data:video/mp4;base64,{too_large}").status == 413
    assert _media_error(options, "ftp://host/clip.mp4").code == "unsupported_url"


def test_http_media_is_fetched_with_a_limit_and_clear_errors():
    def handler(request):
        if request.url.path == "/clip.mp4":
            return httpx.Response(200, content=b"v" * 50)
        if request.url.path == "/big.mp4":
            return httpx.Response(200, content=b"v" * 500)
        if request.url.path == "/moved.mp4":
            return httpx.Response(302, headers={"Location": "http://elsewhere.test/clip.mp4"})
        return httpx.Response(404)

    transport = httpx.MockTransport(handler)
    options = ServerOptions(max_media_bytes=100)
    assert _resolve(options, "http://media.test/clip.mp4", transport=transport).data == b"v" * 50
    big = _media_error(options, "http://media.test/big.mp4", transport=transport)
    assert big.status == 413 and "--max-media-bytes" in big.message
    assert "HTTP 404" in _media_error(options, "http://media.test/none.mp4", transport=transport).message
    pinned = ServerOptions(max_media_bytes=100, allowed_media_domains=("media.test",))
    assert _resolve(pinned, "http://media.test/clip.mp4", transport=transport).data == b"v" * 50
    redirected = _media_error(pinned, "http://media.test/moved.mp4", transport=transport)
    assert redirected.status == 403 and "'elsewhere.test'" in redirected.message


def test_unreachable_media_host_is_a_clear_400():
    from spava.runtime.launch import free_port

    error = _media_error(ServerOptions(media_fetch_timeout_s=5), f"http://127.0.0.1:{free_port()}/clip.mp4")
    assert error.status == 400 and "unreachable or refused the connection" in error.message


def test_drain_pool_runs_blocking_jobs_concurrently_and_reuses_threads():
    from spava.server.bridge import DrainPool

    pool = DrainPool()
    barrier = threading.Barrier(5, timeout=10)
    done = []
    for _ in range(5):  # each job waits for all five: only five threads at once can finish them
        pool.submit(lambda: done.append(barrier.wait()))
    deadline = time.monotonic() + 10
    while len(done) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(done) == [0, 1, 2, 3, 4] and pool.num_threads == 5
    finished = threading.Event()
    pool.submit(finished.set)
    assert finished.wait(10) and pool.num_threads == 5, "an idle thread takes the next job"
    pool.close()
