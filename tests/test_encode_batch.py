"""Batched encoding on disaggregated encoder ranks: the grids of several requests in one vision-tower
call give the same embeddings as one call per request (tiny random Qwen2.5-VL tower, float64); the
multi-process pipeline answers a burst of concurrent requests exactly like one at a time, and a
failing batch fails its requests without leaving the prefill ranks waiting for their embeddings."""

from __future__ import annotations

import glob

import pytest
import torch

from spava.config import load_config
from spava.media.synthetic import make_synthetic_frames
from spava.models.vision_inputs import PixelRows
from spava.models.vision_parallel import assign_units, encode_units, encode_units_batch, plan_vision_units
from spava.comm.shm import ref_glob
from spava.runtime.pipeline import Pipeline, RequestError
from spava.testing.faults import FAULT_DIR_ENV, arm_fault

from _qwen_tiny import PATCH_DIM, tiny_model

# per request: its vision items (t, h, w); different frame sizes, images and videos, and a text-only one
REQUESTS = [[(2, 10, 14)], [(1, 8, 8), (3, 6, 22)], [], [(1, 4, 6)], [(5, 2, 4)]]


@pytest.fixture(scope="module")
def model():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster and immune to other processes' load
    yield tiny_model(torch.float64)
    torch.set_num_threads(before)


def _plans(num_encoders: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels, units, assignments = [], [], []
    for grids in REQUESTS:
        num_patches = sum(t * h * w for t, h, w in grids)
        rows = torch.randn(num_patches, PATCH_DIM, generator=generator, dtype=torch.float64)
        pixels.append(PixelRows(rows) if grids else None)
        units.append(plan_vision_units(grids, merge_size=2))
        assignments.append(assign_units(units[-1], num_encoders))
    return pixels, units, assignments


def _counting(encode):
    calls = []

    def counted(rows, grid):
        calls.append(grid.shape[0])
        return encode(rows, grid)

    return counted, calls


@pytest.mark.parametrize("num_encoders", [1, 2, 3])
def test_one_tower_call_for_the_batch_equals_one_call_per_request(model, num_encoders):
    pixels, units, assignments = _plans(num_encoders)
    for rank in range(num_encoders):
        encode, calls = _counting(model.encode)
        batched = encode_units_batch(encode, pixels, units, assignments, rank, "cpu", torch.float64)
        assert len(calls) == 1 and len(batched) == len(REQUESTS)
        assert calls[0] == sum(stop - start for start, stop in (a[rank] for a in assignments))
        for index in range(len(REQUESTS)):
            alone = encode_units(model.encode, pixels[index], units[index], assignments[index], rank, "cpu",
                                 torch.float64)
            if alone is None:
                assert batched[index] is None, (rank, index)
                continue
            assert batched[index].shape == alone.shape == (alone.shape[0], 64)
            scale = max(1.0, alone.abs().max().item())
            assert (batched[index] - alone).abs().max().item() <= 1e-10 * scale, (rank, index)


def test_a_batch_of_one_is_the_same_tower_call(model):
    pixels, units, assignments = _plans(1)
    alone = encode_units(model.encode, pixels[1], units[1], assignments[1], 0, "cpu", torch.float64)
    (batched,) = encode_units_batch(model.encode, pixels[1:2], units[1:2], assignments[1:2], 0, "cpu", torch.float64)
    assert torch.equal(batched, alone)
    assert encode_units_batch(model.encode, [None], [()], [((0, 0),)], 0, "cpu", torch.float64) == [None]


def test_progress_callback_covers_the_batch_units(model):
    grids = [[(20, 2, 2)], [(20, 2, 2)]]
    pixels = [PixelRows(torch.randn(80, PATCH_DIM, dtype=torch.float64)) for _ in grids]
    units = [plan_vision_units(g, merge_size=2) for g in grids]
    assignments = [assign_units(u, 1) for u in units]
    seen = []
    batched = encode_units_batch(model.encode, pixels, units, assignments, 0, "cpu", torch.float64,
                                 lambda done, total: seen.append((done, total)))
    assert seen[-1] == (40, 40) and len(seen) == 8  # 40 units >= 32: 8 calls, as encode_units does
    for index in range(2):
        alone = encode_units(model.encode, pixels[index], units[index], assignments[index], 0, "cpu", torch.float64)
        assert (batched[index] - alone).abs().max().item() <= 1e-10 * max(1.0, alone.abs().max().item())


def test_an_encode_stage_without_batches_needs_max_batch_requests_1():
    from spava.comm.messages import EncodeBatchReq, ModelTaskReq
    from spava.runtime.roles import _encoder_handlers

    class OneAtATime:
        def process(self, task):
            return None

    assert set(_encoder_handlers(OneAtATime(), 1)) == {ModelTaskReq}
    with pytest.raises(ValueError, match="encode.max_batch_requests=1"):
        _encoder_handlers(OneAtATime(), 4)

    class Batching(OneAtATime):
        def process_batch(self, batch):
            return None

    assert set(_encoder_handlers(Batching(), 4)) == {ModelTaskReq, EncodeBatchReq}


# ----- the multi-process pipeline (1 encoder + 2 prefill ranks on CPU) ------------------------------

OVERRIDES = ["model.dtype=float64", "prefill.attention.method=zigzag_ring", "encode.devices=[cpu]",
             "prefill.devices=[cpu,cpu]", "runtime.log_level=WARNING", "video.fps=null", "video.num_frames=4",
             "stages.prefill=spava.testing.faults:FaultyPrefill", "stages.encode=spava.testing.faults:FaultyEncoder",
             "runtime.request_timeout_s=120", "decode.max_new_tokens=4"]
# different frame sizes (different grids per request) and one text-only request
VIDEOS = [make_synthetic_frames(4, 56, 84, seed=1), make_synthetic_frames(4, 84, 56, seed=2), None,
          make_synthetic_frames(4, 56, 56, seed=3)]


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory):
    """Flag files for spava.testing.faults; the workers inherit the variable when they start."""
    directory = tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(FAULT_DIR_ENV, str(directory))
        yield directory


def _start(fault_dir, max_batch_requests: int) -> Pipeline:
    config = load_config("configs/demo_cpu.yaml", OVERRIDES + [f"encode.max_batch_requests={max_batch_requests}"])
    return Pipeline.from_config(config, is_quiet=True)


@pytest.fixture(scope="module")
def batching(fault_dir):
    with _start(fault_dir, 4) as pipeline:
        yield pipeline


def _submit_held(pipeline, fault_dir, videos, tag: str):
    """Submit every request at once while the prefill ranks are held up by the first one, so the
    others are laid out meanwhile and wait together for the encoder."""
    arm_fault(fault_dir, "prefill-sleep", "3")
    return [pipeline.submit(video, f"What is in clip {i}?", request_id=f"{tag}-{i}") for i, video in enumerate(videos)]


def test_concurrent_requests_are_batched_and_answer_like_one_at_a_time(batching, fault_dir):
    batched = [h.result(timeout=120) for h in _submit_held(batching, fault_dir, VIDEOS, "burst")]
    with _start(fault_dir, 1) as pipeline:
        alone = [h.result(timeout=120) for h in _submit_held(pipeline, fault_dir, VIDEOS, "burst")]
    assert [r.token_ids for r in batched] == [r.token_ids for r in alone]
    assert all(len(r.token_ids) == 4 for r in batched)
    assert max(r.timings["encode_batch_size"] for r in alone) == 1
    assert max(r.timings["encode_batch_size"] for r in batched) > 1


def test_a_failing_batch_fails_each_of_its_requests_and_nothing_hangs(batching, fault_dir):
    """The first request is encoded alone; the two that queued meanwhile form a batch whose tower
    call raises: both fail at once with the cause, the prefill ranks still receive (placeholder)
    rows for them, their shared memory is freed, and the pipeline keeps serving."""
    arm_fault(fault_dir, "encode-batch-fail")
    handles = _submit_held(batching, fault_dir, [VIDEOS[0], VIDEOS[1], VIDEOS[3]], "fail")
    first = handles[0].result(timeout=120)
    for handle in handles[1:]:
        with pytest.raises(RequestError) as error:
            handle.result(timeout=60)
        assert error.value.stage == "model" and error.value.kind == "internal"
        assert "encoding a batch of 2 request(s)" in str(error.value) and "injected" in str(error.value)
    again = batching.run(VIDEOS[0], "What is in clip 0?", request_id="fail-again")
    assert again.token_ids == first.token_ids
    shm_dir = batching.config.runtime.shm_dir
    assert not [path for tag in ("fail-0", "fail-1", "fail-2", "fail-again") for path in glob.glob(ref_glob(shm_dir, tag))]
