"""`spava eval` through a real pipeline, and a real text model answering through the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from spava.media.synthetic import write_synthetic_video

pytestmark = pytest.mark.slow  # starts spava processes (pipelines, CLI, servers)


def test_spava_eval_on_a_tiny_longvideobench_file(tmp_path):
    for name in ("a.mp4", "b.mp4"):
        write_synthetic_video(tmp_path / name, num_frames=16, height=64, width=96, fps=8.0)
    (tmp_path / "c.mp4").write_bytes(b"\x00not a video" * 100)
    records = [
        {"id": "q1", "video_path": "a.mp4", "question": "What color?", "candidates": ["red", "blue"],
         "correct_choice": 1, "duration_group": 15},
        {"id": "q2", "video_path": "b.mp4", "question": "How many?", "candidates": ["1", "2", "3"],
         "correct_choice": 0, "duration_group": 600},
        {"id": "q3", "video_path": "c.mp4", "question": "Who?", "candidates": ["cat", "dog"],
         "correct_choice": 0, "duration_group": 600},
    ]
    annotations = tmp_path / "lvb.jsonl"
    annotations.write_text("\n".join(json.dumps(r) for r in records))
    out = tmp_path / "results.json"
    command = [sys.executable, "-m", "spava.cli", "eval", "--benchmark", "longvideobench", "--annotations",
               str(annotations), "--video-dir", str(tmp_path), "--num-frames", "4", "--max-new-tokens", "2",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["num_items"] == 3 and set(results["per_group"]) == {"15", "600"}
    assert list(results["errors"]) == [str(tmp_path / "c.mp4")]
    assert "longvideobench:" in done.stdout


def test_real_text_model_answers_a_passkey_through_the_pipeline(tmp_path):
    pytest.importorskip("gguf")
    from spava.eval.smollm2 import find_smollm2_gguf

    try:
        find_smollm2_gguf()
    except (FileNotFoundError, ImportError, ValueError) as error:
        pytest.skip(f"SmolLM2 weights not installed ({error})")
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    document = filler * 30 + "The pass key is 48213. Remember it. 48213 is the pass key. " + filler * 30
    from spava.config import load_config
    from spava.runtime.pipeline import Pipeline

    config = load_config("configs/smollm2_text_cpu.yaml", ["runtime.log_level=WARNING"])
    with Pipeline.from_config(config, is_quiet=True) as pipeline:
        result = pipeline.run(None, "What is the pass key? Answer with the number only.", document=document)
        assert "48213" in result.text and result.method == "spava" and result.num_visual_tokens == 0
        with pytest.raises(Exception, match="no vision encoder"):
            pipeline.run(write_synthetic_video(tmp_path / "v.mp4", num_frames=8), "What is this?")
