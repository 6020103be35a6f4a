"""System-level exactness: the multi-process pipeline with an exact method answers exactly like a
single-process `full` run of the same model on the same frames (float64, greedy)."""

from __future__ import annotations

import torch

from spava.attention.registry import get_method
from spava.comm.collectives import SPComm
from spava.config import load_config
from spava.media.synthetic import make_synthetic_frames
from spava.models.generation import SamplingParams
from spava.models.loading import build_adapter
from spava.models.qwen2_5_vl.inputs import build_prompt_inputs
from spava.models.qwen2_5_vl.processing import QwenProcessorConfig, preprocess_video
from spava.models.qwen2_5_vl.prompt import build_chat_prompt, load_qwen_tokenizer
from spava.models.runner import ModelRunner
from spava.runtime.pipeline import Pipeline

OVERRIDES = ["model.dtype=float64", "prefill.attention.method=zigzag_ring", "encode.devices=[cpu]",
             "prefill.devices=[cpu,cpu,cpu]", "runtime.log_level=WARNING", "video.fps=null", "video.num_frames=6"]
QUESTION = "What moves in this clip?"


def _reference_tokens(config, frames, num_tokens: int) -> list[int]:
    adapter = build_adapter(config.model, ("vision", "text"), "cpu")
    processor = QwenProcessorConfig(min_pixels=config.video.min_pixels, max_pixels=config.video.max_pixels,
                                    resize_backend="torch")  # the reference video path (qwen-vl-utils)
    pixels, grid = preprocess_video(torch.from_numpy(frames), processor)
    tokenizer = load_qwen_tokenizer()
    prompt = build_chat_prompt(tokenizer, QUESTION, video_grid_thw=grid.tolist())
    inputs = build_prompt_inputs(prompt.input_ids, prompt.num_query_tokens, adapter.token_ids(),
                                 pixel_values_videos=pixels, video_grid_thw=[grid.tolist()],
                                 second_per_grid_ts=[1.0])
    runner = ModelRunner(adapter, get_method("full"), SPComm.single())
    return runner.generate(inputs, SamplingParams(max_new_tokens=num_tokens, ignore_eos=True)).token_ids


def test_pipeline_with_zigzag_ring_answers_like_single_process_full():
    config = load_config("configs/demo_cpu.yaml", OVERRIDES)
    frames = make_synthetic_frames(6, 80, 112, seed=3)
    with Pipeline.from_config(config, is_quiet=True) as pipeline:
        result = pipeline.run(frames, QUESTION, max_new_tokens=8)
    # 6 frames at the assumed 2 fps -> second_per_grid = 1.0, as in the reference
    assert result.token_ids[:8] == _reference_tokens(config, frames, 8)
    assert result.method == "zigzag_ring" and result.world_size == 4


def test_short_prompts_run_the_exact_method_and_say_so():
    """With prefill.min_tokens_per_rank above the prompt's tokens per rank, spava gives way to exact
    zigzag_ring on every rank (encoder routing included) and the result names it."""
    overrides = [o for o in OVERRIDES if not o.startswith("prefill.attention.method")]
    config = load_config("configs/demo_cpu.yaml", overrides + ["prefill.attention.method=spava",
                                                                "prefill.min_tokens_per_rank=100000"])
    frames = make_synthetic_frames(6, 80, 112, seed=3)
    with Pipeline.from_config(config, is_quiet=True) as pipeline:
        result = pipeline.run(frames, QUESTION, max_new_tokens=8)
    assert result.method == "zigzag_ring"
    assert result.token_ids[:8] == _reference_tokens(config, frames, 8)
