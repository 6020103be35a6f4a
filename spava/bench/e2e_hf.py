"""What users do today, timed from the same file: HF transformers `generate` on one device.

Per request: decode the sampled frames (PyAV, the same plan as the pipeline), preprocess them on the
CPU as qwen-vl-utils and HF's video processors do (the family's `VisionSpec.preprocess` on CPU
tensors, which is that reference path: e.g. bicubic antialias resize of uint8 tensors, then
normalise and patchify, float32, with the family's patch size and normalisation), copy the pixel rows
to the device, and run the HF model's `generate` (`Qwen2_5_VLForConditionalGeneration`,
`Qwen3VLForConditionalGeneration`; SDPA attention, greedy, exactly `max_new_tokens` tokens). The
model is built once before timing (random weights of the same size, or the same checkpoint);
warm-up requests are not measured. Times come from the host clock after a device
synchronisation; the first and last token times from a streamer.
"""

from __future__ import annotations

import statistics
import time

import torch

from spava.bench.e2e_inputs import frame_sampling_of, plan_video
from spava.comm.messages import TensorRef, VisualItem
from spava.models.family import get_family
from spava.models.loading import build_adapter


class _TokenClock:
    """A `generate` streamer that records when each new token arrives (the first `put` is the prompt)."""

    def __init__(self):
        self.times: list[float] = []
        self.num_puts = 0

    def put(self, value) -> None:
        self.num_puts += 1
        if self.num_puts > 1:
            self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _build_model(config, device: str):
    adapter = build_adapter(config.model, ("vision", "text"), device)
    adapter.hf.config._attn_implementation = "sdpa"
    return adapter


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _one_request(adapter, processor, config, plan, video: str, args, device: str) -> dict:
    from spava.media.video import decode_video

    start = time.perf_counter()
    decoded = decode_video(video, frame_sampling_of(config))
    decoded_at = time.perf_counter()
    # the family's CPU preprocessing is the reference path (qwen-vl-utils / HF's processors on the CPU)
    pixels = adapter.vision_spec.preprocess(torch.from_numpy(decoded.frames), plan.resized_hw, "video")
    grid = list(plan.grid_thw)
    item = VisualItem("video", TensorRef("", list(decoded.frames.shape), "uint8"), None, grid, list(plan.resized_hw),
                      list(decoded.timestamps), float(decoded.plan.second_per_grid))
    inputs = processor.build_inputs(args.prompt, document=None, items=[item], system_prompt=config.layout.system_prompt)
    preprocessed_at = time.perf_counter()
    kwargs = adapter.hf_inputs(inputs.input_ids, pixels, [grid], "video", decoded.plan.second_per_grid)
    ids = kwargs.pop("input_ids")
    kwargs["attention_mask"] = torch.ones_like(ids)
    _sync(device)
    transferred_at = time.perf_counter()
    clock = _TokenClock()
    with torch.inference_mode():
        adapter.hf.generate(input_ids=ids, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                            do_sample=False, streamer=clock, **kwargs)
    _sync(device)
    end = time.perf_counter()
    first = clock.times[0]
    return {"video_decode_s": decoded_at - start, "preprocess_s": preprocessed_at - decoded_at,
            "transfer_s": transferred_at - preprocessed_at, "ttft_s": first - start, "total_s": end - start,
            "tpot_s": (clock.times[-1] - first) / max(len(clock.times) - 1, 1), "num_new_tokens": len(clock.times),
            "num_prompt_tokens": int(ids.shape[1]), "num_frames": int(decoded.frames.shape[0])}


def hf_file_to_answer(config, video: str, args) -> dict:
    """Median over `args.repeats` requests (after `args.warmup`) of HF's file-to-answer timings."""
    device = config.prefill.devices[0]
    if device.startswith("cuda") and not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    plan = plan_video(config, video)

    processor = get_family(config.model).processor()
    adapter = _build_model(config, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:
        warmup = args.warmup if args.hf_warmup is None else args.hf_warmup
        for _ in range(warmup):
            _one_request(adapter, processor, config, plan, video, args, device)
        rows = [_one_request(adapter, processor, config, plan, video, args, device) for _ in range(args.repeats)]
    except torch.cuda.OutOfMemoryError:
        return {"skipped": "out of memory"}
    finally:
        del adapter
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    summary = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
    summary["grid"] = list(plan.grid_thw)
    if device.startswith("cuda"):
        summary["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return summary
