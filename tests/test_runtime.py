"""The pipeline runtime end to end on CPU: real worker processes, real ZMQ sockets, fault injection.

One pipeline (tiny random Qwen2.5-VL, 1 video + 1 layout worker, 1 encoder + 2 spava prefill ranks)
serves every test of the module; fault tests arm flag files (spava.testing.faults) and then check
that the failing request gets a clear error and the next request is served.
"""

from __future__ import annotations

import glob
import os
import time

import pytest
import zmq

from spava.comm.messages import ErrorOutput, decode_message
from spava.comm.shm import ref_glob
from spava.config import load_config
from spava.media.synthetic import make_synthetic_frames, write_synthetic_video
from spava.runtime.pipeline import Pipeline, RequestError
from spava.testing.faults import FAULT_DIR_ENV, arm_fault

OVERRIDES = [
    "stages.video=spava.testing.faults:FaultyVideo",
    "stages.layout=spava.testing.faults:FaultyLayout",
    "stages.prefill=spava.testing.faults:FaultyPrefill",
    "runtime.heartbeat_timeout_s=4",
    "runtime.request_timeout_s=120",  # a stuck request fails the test instead of hanging it
    "runtime.log_level=WARNING",
    "layout.max_visual_tokens=5000",
    "decode.max_new_tokens=4",
]


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
def pipeline(fault_dir, shm_dir):
    config = load_config("configs/demo_cpu.yaml", [*OVERRIDES, f"runtime.shm_dir={shm_dir}"])
    with Pipeline.from_config(config, is_quiet=True) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    return str(write_synthetic_video(path, num_frames=16, height=64, width=96, fps=8.0))


def _shm_files(pipeline, request_id: str) -> list[str]:
    """The shared-memory files of `request_id` in the pipeline's shm dir."""
    return glob.glob(ref_glob(pipeline.config.runtime.shm_dir, request_id))


def test_every_video_input_kind_is_answered(pipeline, video_path):
    with open(video_path, "rb") as handle:
        data = handle.read()
    frames = make_synthetic_frames(6, 64, 96)
    kinds = {"path": video_path, "bytes": data, "frames": frames, "frame list": list(frames), "text only": None}
    for kind, video in kinds.items():
        result = pipeline.run(video, "What is in this video?", request_id=f"kind-{kind.replace(' ', '-')}")
        assert len(result.token_ids) == 4 and result.finish_reason == "length", kind
        assert (result.num_frames > 0) == (video is not None), kind
        assert result.num_prompt_tokens > result.num_visual_tokens >= 0
        assert {"video_s", "layout_s", "prefill_s", "decode_s", "total_s"} <= set(result.timings) or video is None
        assert not _shm_files(pipeline, result.request_id), "shared memory must be freed when a request ends"


def test_an_image_is_answered_as_an_image(pipeline, tmp_path):
    from PIL import Image

    image = make_synthetic_frames(1, 70, 90, seed=5)[0]
    path = tmp_path / "still.png"
    Image.fromarray(image).save(path)
    for kind, source in {"path": str(path), "bytes": path.read_bytes(), "array": image}.items():
        result = pipeline.run(None, "What is in this picture?", image=source, request_id=f"image-{kind}")
        assert result.num_frames == 1 and result.num_visual_tokens > 0 and len(result.token_ids) == 4, kind
        assert not _shm_files(pipeline, result.request_id)
    with pytest.raises(RequestError, match="not a readable image") as error:
        pipeline.run(None, "What is in this picture?", image=b"not an image at all")
    assert error.value.kind == "bad_input"
    with pytest.raises(ValueError, match="not both"):
        pipeline.submit(str(path), "Which?", image=str(path))


def test_the_model_ranks_start_while_frames_still_decode(pipeline, fault_dir, video_path):
    arm_fault(fault_dir, "video-slow-frames", "0.5")  # 4 sampled frames: about 2 s of decoding
    result = pipeline.run(video_path, "What moves?", request_id="streamed")
    timings = result.timings
    assert timings["video_decode_s"] > 1.5
    assert timings["frames_wait_s"] > 0.5  # the encoder was waiting on frames that were still decoding
    # decoding and the model stage overlapped: the request took less than the two in a row
    assert timings["total_s"] < timings["video_decode_s"] + timings["prefill_stage_s"] - 0.5
    assert not _shm_files(pipeline, "streamed")


def test_streaming_yields_each_token(pipeline, video_path):
    pieces = list(pipeline.stream(video_path, "Describe it.", max_new_tokens=5))
    assert len(pieces) == 5


def test_frames_are_freed_once_read_while_the_request_goes_on(pipeline, video_path):
    """Every model worker reports when it has read its frames; the scheduler frees them then, during
    the prefill, and the layout's files when the request ends."""
    handle = pipeline.submit(video_path, "Describe it.", stream=True, max_new_tokens=4, request_id="frees-early")
    during = None
    for _ in handle.tokens():
        if during is None:  # the first token: the decode runs, the request still holds its layout
            during = [os.path.basename(path) for path in _shm_files(pipeline, "frees-early")]
    handle.result()
    assert during and not any("-frames-" in name for name in during), during
    assert not _shm_files(pipeline, "frees-early")


def test_document_prompt_splits_context_from_question(pipeline):
    result = pipeline.run(None, "What is the pass key?", document="The pass key is 1234. " * 40)
    assert result.num_prompt_tokens > 200 and result.num_visual_tokens == 0


@pytest.mark.parametrize(
    "make_video,prompt,kwargs,stage,message",
    [
        (lambda tmp: str(tmp / "missing.mp4"), "hi", {}, "admission", "does not exist"),
        (lambda tmp: _write(tmp / "empty.mp4", b""), "hi", {}, "admission", "is empty"),
        (lambda tmp: _write(tmp / "noise.mp4", os.urandom(4096)), "hi", {}, "video", "video"),
        (lambda tmp: _write(tmp / "text.mp4", b"hello world\n" * 100), "hi", {}, "video", "video"),
        (lambda tmp: None, "   ", {}, "admission", "prompt is empty"),
        (lambda tmp: None, "hi", {"temperature": -1.0}, "admission", "temperature"),
        (lambda tmp: None, "hi", {"nucleus": 0.5}, "admission", "unknown sampling option"),
        (lambda tmp: None, "hi", {"video_options": {"fps": -1.0}}, "admission", "fps"),
    ],
)
def test_bad_input_fails_only_that_request(pipeline, tmp_path, make_video, prompt, kwargs, stage, message):
    with pytest.raises(RequestError) as error:
        pipeline.run(make_video(tmp_path), prompt, **kwargs)
    assert error.value.stage == stage and error.value.kind == "bad_input"
    assert message in str(error.value)
    assert pipeline.run(None, "still serving?").finish_reason == "length"


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def test_refused_request_frees_its_encoded_video(pipeline, video_path):
    with open(video_path, "rb") as handle:
        data = handle.read()
    with pytest.raises(RequestError) as error:
        pipeline.run(data, "hi", video_options={"fps": None, "num_frames": 3}, request_id="refused-bytes")
    assert error.value.stage == "admission"
    assert not _shm_files(pipeline, "refused-bytes"), "the scheduler frees what a refused request brought"


def test_refusals_free_the_payload_and_a_duplicate_id_keeps_the_first_request(pipeline, fault_dir, video_path):
    frames = make_synthetic_frames(4, 64, 96)
    with pytest.raises(RequestError) as error:  # refused at admission: its frames file is freed at once
        pipeline.run(frames, "hi", max_new_tokens=100_000, request_id="refused-frames")
    assert error.value.kind == "bad_input" and "decode.max_allowed_new_tokens" in str(error.value)
    assert not _shm_files(pipeline, "refused-frames")
    arm_fault(fault_dir, "layout-sleep", "1")
    first = pipeline.submit(frames, "first", request_id="twice")
    with pytest.raises(ValueError, match="'twice' is already in use"):
        pipeline.submit(frames, "second", request_id="twice")  # refused before anything is written
    assert first.result(timeout=120).finish_reason == "length"
    assert not _shm_files(pipeline, "twice")


def test_over_budget_video_is_rejected_before_decoding_with_the_estimate(pipeline, video_path):
    with pytest.raises(RequestError) as error:
        pipeline.run(video_path, "hi", video_options={"min_pixels": 2_000_000, "max_pixels": 12_845_056})
    text = str(error.value)
    assert error.value.stage == "video" and "visual tokens" in text and "layout.max_visual_tokens=5000" in text


def test_crashing_worker_fails_its_request_and_is_restarted(pipeline, fault_dir, video_path):
    arm_fault(fault_dir, "layout-crash")
    start = time.monotonic()
    with pytest.raises(RequestError) as error:
        pipeline.run(video_path, "hi", request_id="crash-layout")
    assert error.value.stage == "layout" and error.value.kind == "worker_died"
    assert time.monotonic() - start < 20
    assert pipeline.run(video_path, "again").finish_reason == "length"
    assert not _shm_files(pipeline, "crash-layout")


def test_files_a_dying_worker_wrote_but_never_announced_are_freed(pipeline, fault_dir):
    arm_fault(fault_dir, "layout-crash-late")
    with pytest.raises(RequestError) as error:
        pipeline.run(None, "hi", request_id="crash-late")
    assert error.value.kind == "worker_died"
    assert not _shm_files(pipeline, "crash-late")


def test_crashing_model_rank_fails_its_request_and_the_group_restarts(pipeline, fault_dir, video_path):
    arm_fault(fault_dir, "prefill-crash-rank1")
    with pytest.raises(RequestError) as error:
        pipeline.run(video_path, "hi")
    assert error.value.stage == "model" and error.value.kind == "worker_died"
    assert pipeline.run(video_path, "again").finish_reason == "length"
    assert pipeline.status().is_healthy


def test_timeout_fails_the_request_and_frees_its_memory(pipeline, fault_dir, video_path):
    arm_fault(fault_dir, "layout-sleep", "3")
    with pytest.raises(RequestError) as error:
        pipeline.run(video_path, "hi", timeout_s=1.0, request_id="slow-one")
    assert error.value.kind == "timeout"
    time.sleep(3.5)
    assert not _shm_files(pipeline, "slow-one")
    assert pipeline.run(None, "next").finish_reason == "length"


def test_cancel_fails_the_request(pipeline, fault_dir, video_path):
    arm_fault(fault_dir, "video-sleep", "2")
    handle = pipeline.submit(video_path, "hi")
    time.sleep(0.3)
    handle.cancel()
    with pytest.raises(RequestError) as error:
        handle.result(timeout=30)
    assert error.value.kind == "cancelled"


def test_malformed_message_gets_an_error_and_the_scheduler_keeps_serving(pipeline):
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.connect(pipeline.control_address)
    socket.send(b"\x93not-msgpack-at-all")
    assert socket.poll(5000)
    reply = decode_message(socket.recv())
    assert isinstance(reply, ErrorOutput) and "malformed" in reply.message
    socket.close(0)
    context.term()
    assert pipeline.run(None, "fine").finish_reason == "length"


def test_hundred_queued_requests_all_finish(pipeline):
    handles = [pipeline.submit(None, f"question {i}?", max_new_tokens=1, request_id=f"bulk-{i}") for i in range(100)]
    results = [handle.result(timeout=600) for handle in handles]
    assert [len(r.token_ids) for r in results] == [1] * 100
    assert not glob.glob(os.path.join(pipeline.config.runtime.shm_dir, "spava-*-bulk-*"))
    status = pipeline.status()
    assert status.num_inflight == 0 and status.is_healthy


def test_prometheus_metrics_are_served(tmp_path):
    import urllib.request

    pytest.importorskip("prometheus_client")
    from spava.runtime.launch import free_port
    from spava.runtime.metrics import Metrics

    port = free_port()
    metrics = Metrics(port)
    metrics.update({"video": [1, 2], "layout": [], "model": []}, True)
    metrics.finished("ok", "done", {"video_s": 0.2, "prefill_s": 1.5})
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'spava_queue_depth{stage="video"} 2.0' in text
    assert 'spava_requests_total{outcome="ok",stage="done"} 1.0' in text
    assert "spava_stage_seconds_bucket" in text and "spava_healthy 1.0" in text
