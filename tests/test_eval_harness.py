"""VNBench / LongVideoBench harness on tiny synthetic annotation files with a fake model."""

from __future__ import annotations

import json

import pytest

from spava.eval.videobench import (
    ANSWER_INSTRUCTION, build_mcq_prompt, evaluate, frames_answerer, load_longvideobench, load_vnbench,
    paper_frame_sampling, parse_option_letter, read_annotations, run_benchmark,
)

VN_OPTIONS = ["red", "green", "blue", "yellow"]


def rotated(options, shift):
    return options[shift:] + options[:shift]


def vnbench_records():
    """Two subtasks, one question each, 4 rotated tries (as in VNBench-main-4try.json)."""
    records = []
    for subtask, video, gt in (("ret_insert1", "/VNBench_new/v1.mp4", "blue"),
                               ("cnt_edit1", "/VNBench_new/v2.mp4", "3")):
        options = VN_OPTIONS if subtask.startswith("ret") else ["1", "2", "3", "4"]
        for attempt in range(4):
            records.append({"video": video, "question": f"Question about {subtask}?",
                            "options": rotated(options, attempt), "gt": gt, "type": subtask, "try": attempt,
                            "needle_time": [1.0], "length": 30})
    return records


def lvb_records():
    return [
        {"id": "q1", "video_path": "a.mp4", "question": "What color?", "candidates": ["red", "blue"],
         "correct_choice": 1, "duration_group": 15},
        {"id": "q2", "video_path": "b.mp4", "question": "How many?", "candidates": ["1", "2", "3"],
         "correct_choice": 0, "duration_group": 600},
        {"id": "q3", "video_path": "c.mp4", "question": "Who?", "candidates": ["cat", "dog", "cow", "pig", "fox"],
         "correct_choice": "E", "duration_group": 600},
    ]


def oracle_except(wrong: set, answer_of):
    """A fake model: answers right (in varied styles) except for videos/questions in `wrong`."""
    styles = ["{}", "The answer is ({}).", "{}. because", "Answer: {}"]
    calls = []

    def answer(video_path, prompt):
        calls.append((video_path, prompt))
        letter = answer_of(video_path, prompt)
        if (video_path.split("/")[-1], len(calls) % 4) in wrong:
            letter = "A" if letter != "A" else "B"
        return styles[len(calls) % len(styles)].format(letter)

    return answer, calls


def letter_of_text(prompt, text):
    for line in prompt.splitlines():
        if line[1:3] == ". " and line[3:] == text:
            return line[0]
    raise AssertionError(f"{text!r} not in prompt")


@pytest.mark.parametrize("output, expected", [
    ("B", "B"), ("(C)", "C"), ("The answer is (B).", "B"), ("Answer: D", "D"), ("A. red", "A"),
    ("Based on the video, C", "C"), ("the blue one", "C"), ("none of them", None), ("E", None),
])
def test_parse_option_letter(output, expected):
    assert parse_option_letter(output, ("red", "green", "blue", "yellow")) == expected


def test_prompt_lists_options_with_letters():
    prompt = build_mcq_prompt("What color? ", ["red", "blue"])
    assert prompt == f"What color?\nA. red\nB. blue\n{ANSWER_INSTRUCTION}"


def test_vnbench_per_subtask_and_official_4try_accuracy(tmp_path):
    path = tmp_path / "VNBench-main-4try.json"
    path.write_text(json.dumps(vnbench_records()))
    (tmp_path / "v1.mp4").write_bytes(b"")  # local copies drop the VNBench_new/ folder
    items = load_vnbench(path, tmp_path)
    assert len(items) == 8 and items[0].video_path == str(tmp_path / "v1.mp4")
    assert items[0].options == tuple(VN_OPTIONS) and items[0].answer_index == 2
    gts = {"v1.mp4": "blue", "v2.mp4": "3"}
    # one wrong try on v2 (cnt_edit1): per-item 3/4 but official 4-try 0/1
    answer, calls = oracle_except({("v2.mp4", 3)}, lambda v, p: letter_of_text(p, gts[v.split("/")[-1]]))
    results = evaluate(items, answer, "vnbench")
    assert len(calls) == 8 and results["num_unparsed"] == 0
    assert results["per_group"]["ret_insert1"]["accuracy"] == 100.0
    assert results["per_group"]["cnt_edit1"]["correct"] == 3
    assert results["per_group_4try"]["ret_insert1"]["accuracy"] == 100.0
    assert results["per_group_4try"]["cnt_edit1"]["accuracy"] == 0.0
    assert results["accuracy_4try"] == 50.0 and results["accuracy"] == 87.5
    assert set(results["per_task_4try"]) == {"cnt", "ret"}


def test_longvideobench_per_duration_group_and_json(tmp_path):
    path = tmp_path / "lvb_val.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lvb_records()))
    items = load_longvideobench(path, tmp_path / "videos")
    assert [item.answer_index for item in items] == [1, 0, 4]
    answers = {"a.mp4": "B", "b.mp4": "C", "c.mp4": "E"}  # b.mp4 is wrong
    out = tmp_path / "out" / "lvb.json"
    results = run_benchmark("longvideobench", path, tmp_path / "videos",
                            lambda video, prompt: f"The answer is ({answers[video.split('/')[-1]]}).", out)
    assert list(results["per_group"]) == ["15", "600"]
    assert results["per_group"]["15"]["accuracy"] == 100.0
    assert results["per_group"]["600"]["correct"] == 1 and results["per_group"]["600"]["total"] == 2
    saved = json.loads(out.read_text())
    assert saved["accuracy"] == pytest.approx(200 / 3)
    assert saved["items"][1]["prediction"] == "C" and saved["items"][1]["answer"] == "A"
    assert "E. fox" in saved["items"][2]["prompt"]


def test_annotations_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"video": "v.mp4", "question": "q?", "options": ["a", "b"], "type": "ret_edit1"}]))
    with pytest.raises(ValueError, match="missing field gt_option / gt / answer"):
        load_vnbench(bad)
    bad.write_text(json.dumps([{"video_path": "v.mp4", "question": "q?", "candidates": ["a", "b"],
                                "correct_choice": 5, "duration_group": 15}]))
    with pytest.raises(ValueError, match="neither an option"):
        load_longvideobench(bad)
    bad.write_text(json.dumps({"a": [], "b": []}))
    with pytest.raises(ValueError, match="exactly one list"):
        read_annotations(bad)
    with pytest.raises(ValueError, match="benchmark must be one of"):
        evaluate([], lambda v, p: "A", "mvbench")


def test_lettered_options_and_wrapped_annotations(tmp_path):
    path = tmp_path / "wrapped.json"
    record = {"video": "v.mp4", "question": "q?", "candidates": ["A. one", "B. two"], "answer": "B",
              "type": "ord_edit1"}
    path.write_text(json.dumps({"data": [record]}))
    (item,) = load_vnbench(path)
    assert item.options == ("one", "two") and item.answer_index == 1


def test_frames_answerer_samples_64_frames_uniformly(tmp_path):
    pytest.importorskip("av")
    from spava.media.sampling import plan_frame_sampling
    from spava.media.synthetic import read_frame_index, write_synthetic_video

    video = tmp_path / "clip.mp4"
    write_synthetic_video(video, num_frames=200, height=48, width=64, fps=25)
    seen = {}

    def generate(frames, prompt):
        seen["indices"] = [read_frame_index(frame) for frame in frames]
        return "A"

    assert frames_answerer(generate)(str(video), "q") == "A"
    assert paper_frame_sampling().num_frames == 64
    expected = plan_frame_sampling(200, 25.0, paper_frame_sampling()).indices
    assert len(expected) == 64 and expected[0] == 0 and expected[-1] == 199
    assert seen["indices"] == list(expected)
