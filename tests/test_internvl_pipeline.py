"""System-level: the multi-process CPU pipeline with a tiny InternVL3 checkpoint answers a video and an
image exactly like HF transformers (`generate` on HF's own processor outputs), float64, greedy.

The pipeline runs its own path end to end: the video worker plans 448x448 tiles and (for the image)
cuts them with Pillow, the layout worker builds the frame prompt, a disaggregated encoder rank
preprocesses the uint8 frames and runs InternViT, and two zigzag_ring prefill ranks (exact) receive
the embeddings of the tokens they hold. The reference is independent of all of it: HF's
`InternVLProcessor` (ids, image tiles), the video processor's arithmetic written in the test, HF's
model.
"""

from __future__ import annotations

import numpy as np
import torch

from _internvl_tiny import reset_hf_rope, save_tiny_checkpoint
from spava.config import load_config
from spava.media.synthetic import make_synthetic_frames
from spava.models.internvl.model import InternVL
from spava.models.internvl.tokenizer import load_internvl_tokenizer
from spava.runtime.pipeline import Pipeline
from test_internvl_processing import _hf_processor, _reference_video_pixels

QUESTION = "What moves in this clip?"
SYSTEM = "You are a helpful assistant."  # layout.system_prompt's default
NUM_NEW_TOKENS = 8


def _chat_text(tokenizer, kind: str) -> str:
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": [{"type": kind}, {"type": "text", "text": QUESTION}]}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.inference_mode()
def _hf_tokens(model: InternVL, input_ids, pixel_values) -> list[int]:
    reset_hf_rope(model)
    generated = model.hf.generate(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=NUM_NEW_TOKENS,
                                  min_new_tokens=NUM_NEW_TOKENS, do_sample=False)
    return generated[0, input_ids.shape[1]:].tolist()


def test_pipeline_answers_a_video_and_an_image_like_hf(tmp_path, monkeypatch):
    checkpoint = save_tiny_checkpoint(str(tmp_path / "internvl3_tiny"))
    overrides = [f"model.path={checkpoint}", "model.dtype=float64", "prefill.attention.method=zigzag_ring",
                 "encode.devices=[cpu]", "prefill.devices=[cpu,cpu]", "runtime.log_level=WARNING",
                 "video.fps=null", "video.num_frames=4"]
    config = load_config("configs/demo_cpu.yaml", overrides)
    frames = make_synthetic_frames(4, 80, 112, seed=3)
    image = np.random.RandomState(4).randint(0, 256, (200, 450, 3), dtype=np.uint8)  # 2 tiles + thumbnail
    with Pipeline.from_config(config, is_quiet=True) as pipeline:
        video_result = pipeline.run(frames, QUESTION, max_new_tokens=NUM_NEW_TOKENS, ignore_eos=True)
        image_result = pipeline.run(None, QUESTION, image=image, max_new_tokens=NUM_NEW_TOKENS, ignore_eos=True)

    tokenizer = load_internvl_tokenizer(checkpoint)
    processor = _hf_processor(tokenizer, monkeypatch)
    model = InternVL.from_pretrained(checkpoint, dtype=torch.float64)
    expansion = processor.replace_video_token({"pixel_values_videos": [torch.zeros(4, 3, 448, 448)]}, 0)
    video_ids = tokenizer(_chat_text(tokenizer, "video").replace("<video>", expansion), add_special_tokens=False,
                          return_tensors="pt")["input_ids"]
    video_pixels = _reference_video_pixels(torch.from_numpy(frames))
    hf_image = processor(images=[image], text=[_chat_text(tokenizer, "image")], return_tensors="pt")
    assert hf_image["pixel_values"].shape[0] == 3

    assert video_result.num_frames == 4 and video_result.num_visual_tokens == 4 * 256
    assert video_result.num_prompt_tokens == video_ids.shape[1] > 640  # dynamic NTK RoPE scales this prefill
    assert video_result.token_ids == _hf_tokens(model, video_ids, video_pixels)
    assert image_result.num_visual_tokens == 3 * 256
    assert image_result.num_prompt_tokens == hf_image["input_ids"].shape[1]
    assert image_result.token_ids == _hf_tokens(model, hf_image["input_ids"], hf_image["pixel_values"])
    assert video_result.method == "zigzag_ring" and video_result.world_size == 3  # 1 encoder + 2 prefill ranks
