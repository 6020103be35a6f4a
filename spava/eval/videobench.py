"""Multiple-choice long-video benchmarks (VNBench, LongVideoBench) with an injected model.

Inputs: an annotation file (JSON list, JSON object holding a list, or JSONL) and the video
directory; the model is any callable `answer(video_path, prompt) -> str`, so the harness runs (and
is tested) without weights. `frames_answerer` adapts a `generate(frames [T, H, W, 3] uint8, prompt)`
function with the paper's frame sampling: 64 frames spread uniformly over the whole video.

Formats accepted (liberal in field names, strict about meaning):
  VNBench (VideoNIAH, `VNBench-main-4try.json`): `video`, `question`, `options` (or `candidates` /
      `choices`), the answer as `gt_option` / `gt` / `answer` (option text, letter or 0-based index),
      `type` (subtask such as `ret_insert1`, `ord_edit1`, `cnt_edit2`), `try` (0-3: each question is
      asked 4 times with its options rotated). Scores: per-item accuracy per subtask, and the official
      4-try accuracy (a question counts only if all of its tries are right), overall = mean over subtasks.
  LongVideoBench (`lvb_val.json`): `video_path`, `question`, `candidates`, `correct_choice` (index or
      letter), `duration_group` (15 / 60 / 600 / 3600 s). Scores: accuracy per duration group + overall.

Output of `evaluate(...)`: a JSON-able dict with the overall accuracy, per-group tables and one row per
item (prompt, raw output, parsed letter, answer, correctness); `write_results` saves it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from spava.media.sampling import FrameSampling

LETTERS = "ABCDE"
PAPER_NUM_FRAMES = 64
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
BENCHMARKS = ("vnbench", "longvideobench")

AnswerFn = Callable[[str, str], str]


@dataclass(frozen=True)
class MCQItem:
    """One multiple-choice question about one video.

    Attributes:
        item_id: unique id within the benchmark.
        video_path: path of the video (the annotation's path joined to the video directory).
        question: the question text; options: 2-5 option texts (letters A-E in this order).
        answer_index: 0-based index of the correct option.
        group: what accuracy is broken down by (VNBench subtask, LongVideoBench duration group).
        question_key: identifies the question across VNBench's rotated tries (else = item_id).
    """

    item_id: str
    video_path: str
    question: str
    options: tuple[str, ...]
    answer_index: int
    group: str
    question_key: str


def read_annotations(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON list, a JSON object with one list value (e.g. "data"), or JSONL."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: neither JSON nor JSON lines ({error})") from error
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise ValueError(f"{path}: a JSON object must hold exactly one list of records, found {len(lists)}")
        data = lists[0]
    if not isinstance(data, list) or not all(isinstance(record, dict) for record in data):
        raise ValueError(f"{path}: expected a list of annotation objects")
    return data


def _field(record: dict, names: Iterable[str], where: str):
    for name in names:
        if name in record and record[name] is not None:
            return record[name]
    raise ValueError(f"{where}: missing field {' / '.join(names)} (fields present: {', '.join(sorted(record))})")


_LETTER_PREFIX = re.compile(r"^\(?([A-E])[.):]\s*")


def _clean_options(raw, where: str) -> tuple[str, ...]:
    """Option texts; strips "A. " style prefixes when every option carries its own letter."""
    if not isinstance(raw, list) or not 2 <= len(raw) <= len(LETTERS):
        raise ValueError(f"{where}: options must be a list of 2 to {len(LETTERS)} entries, got {raw!r}")
    options = [str(option).strip() for option in raw]
    prefixes = [_LETTER_PREFIX.match(option) for option in options]
    if all(m is not None and m.group(1) == LETTERS[i] for i, m in enumerate(prefixes)):
        options = [option[m.end():] for option, m in zip(options, prefixes)]
    return tuple(options)


def _answer_index(raw, options: tuple[str, ...], where: str) -> int:
    """0-based answer index from an index, a letter, or the option text."""
    if isinstance(raw, bool):
        raise ValueError(f"{where}: answer {raw!r} is a boolean, expected an index, letter or option text")
    if isinstance(raw, int) and 0 <= raw < len(options):
        return raw
    text = str(raw).strip()
    stripped = [option.lower() for option in options]
    if text.lower() in stripped:
        return stripped.index(text.lower())
    match = _LETTER_PREFIX.match(text + ".") if len(text) <= 3 else None
    if match and LETTERS.index(match.group(1)) < len(options):
        return LETTERS.index(match.group(1))
    if text.isdigit() and int(text) < len(options):
        return int(text)
    raise ValueError(f"{where}: answer {raw!r} is neither an option, a letter A-{LETTERS[len(options) - 1]} "
                     f"nor an index < {len(options)} (options: {list(options)})")


def _video_path(raw: str, video_dir: str | os.PathLike | None) -> str:
    """Join the annotation's path to `video_dir`; fall back to its base name (VNBench paths carry a
    leading folder such as "/VNBench_new/" that local copies often drop)."""
    if video_dir is None:
        return raw
    joined = Path(video_dir) / raw.lstrip("/")
    if joined.exists():
        return str(joined)
    by_name = Path(video_dir) / Path(raw).name
    return str(by_name if by_name.exists() else joined)


def load_vnbench(annotation_path: str | os.PathLike, video_dir: str | os.PathLike | None = None) -> list[MCQItem]:
    """VNBench items (see the module docstring for the fields)."""
    items = []
    for index, record in enumerate(read_annotations(annotation_path)):
        where = f"{annotation_path} record {index}"
        options = _clean_options(_field(record, ("options", "candidates", "choices"), where), where)
        answer = _answer_index(_field(record, ("gt_option", "gt", "answer"), where), options, where)
        video = str(_field(record, ("video", "video_path"), where))
        subtask = str(_field(record, ("type", "task_type", "subtask"), where))
        # The official score groups the rotated tries of one question by video and subtask.
        key = f"{Path(video).stem}_{subtask}"
        item_id, question_key = (f"{key}_{record['try']}", key) if "try" in record else (f"{key}_r{index}",) * 2
        items.append(MCQItem(item_id=item_id, video_path=_video_path(video, video_dir),
                             question=str(_field(record, ("question",), where)), options=options,
                             answer_index=answer, group=subtask, question_key=question_key))
    _check_unique(items, annotation_path)
    return items


def load_longvideobench(annotation_path: str | os.PathLike,
                        video_dir: str | os.PathLike | None = None) -> list[MCQItem]:
    """LongVideoBench items; the group is the duration group in seconds (e.g. "600")."""
    items = []
    for index, record in enumerate(read_annotations(annotation_path)):
        where = f"{annotation_path} record {index}"
        options = _clean_options(_field(record, ("candidates", "options", "choices"), where), where)
        answer = _answer_index(_field(record, ("correct_choice", "answer", "gt"), where), options, where)
        video = str(_field(record, ("video_path", "video"), where))
        item_id = str(record.get("id", f"{Path(video).stem}_{index}"))
        group = str(_field(record, ("duration_group",), where))
        items.append(MCQItem(item_id=item_id, video_path=_video_path(video, video_dir),
                             question=str(_field(record, ("question",), where)), options=options,
                             answer_index=answer, group=group, question_key=item_id))
    _check_unique(items, annotation_path)
    return items


def _check_unique(items: list[MCQItem], path) -> None:
    seen = set()
    for item in items:
        if item.item_id in seen:
            raise ValueError(f"{path}: duplicate item id {item.item_id!r}; give each record a unique id")
        seen.add(item.item_id)


def build_mcq_prompt(question: str, options: Iterable[str]) -> str:
    """'question\\nA. ...\\nB. ...\\nAnswer with the option's letter from the given choices directly.'"""
    lines = [question.strip()] + [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return "\n".join(lines + [ANSWER_INSTRUCTION])


def parse_option_letter(output: str, options: tuple[str, ...] | int = len(LETTERS)) -> str | None:
    """The chosen letter in a model output, or None.

    Order: the first standalone capital letter among the valid ones ("B", "(B)", "B. red",
    "The answer is (B)."; "Answer" or "A cat" words do not count), else the one option whose text
    the output contains.
    """
    num_options = options if isinstance(options, int) else len(options)
    valid = LETTERS[:num_options]
    match = re.search(rf"(?<![A-Za-z])([{valid}])(?![A-Za-z'])", output)
    if match:
        return match.group(1)
    if isinstance(options, tuple):
        hits = [i for i, option in enumerate(options) if option and option.lower() in output.lower()]
        if len(hits) == 1:
            return LETTERS[hits[0]]
    return None


def paper_frame_sampling(num_frames: int = PAPER_NUM_FRAMES) -> FrameSampling:
    """`num_frames` frames spread uniformly over the whole video (64 in the paper)."""
    return FrameSampling(fps=None, num_frames=num_frames, max_frames=max(768, num_frames))


def frames_answerer(generate: Callable, num_frames: int = PAPER_NUM_FRAMES, backend: str = "auto") -> AnswerFn:
    """Adapt `generate(frames uint8 [T, H, W, 3], prompt) -> str` into `answer(video_path, prompt)`."""
    from spava.media.video import decode_video

    sampling = paper_frame_sampling(num_frames)

    def answer(video_path: str, prompt: str) -> str:
        return generate(decode_video(video_path, sampling, backend=backend).frames, prompt)

    return answer


def evaluate(items: list[MCQItem], answer: AnswerFn, benchmark: str,
             progress: Callable[[int, int], None] | None = None) -> dict:
    """Ask every item, parse the letters and score them (see `score`)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    if not items:
        raise ValueError("no items to evaluate; check the annotation file")
    rows = []
    for done, item in enumerate(items, start=1):
        prompt = build_mcq_prompt(item.question, item.options)
        output = answer(item.video_path, prompt)
        letter = parse_option_letter(output, item.options)
        rows.append({**asdict(item), "options": list(item.options), "prompt": prompt, "output": output,
                     "prediction": letter, "answer": LETTERS[item.answer_index],
                     "correct": letter == LETTERS[item.answer_index]})
        if progress is not None:
            progress(done, len(items))
    return score(rows, benchmark)


def _accuracy(flags: list[bool]) -> dict:
    return {"correct": sum(flags), "total": len(flags), "accuracy": 100.0 * sum(flags) / len(flags)}


def score(rows: list[dict], benchmark: str) -> dict:
    """Accuracy (%) per group and overall from per-item rows (`group`, `question_key`, `correct`)."""
    groups = sorted({row["group"] for row in rows}, key=_group_order)
    per_group = {g: _accuracy([row["correct"] for row in rows if row["group"] == g]) for g in groups}
    result = {"benchmark": benchmark, "num_items": len(rows),
              "accuracy": _accuracy([row["correct"] for row in rows])["accuracy"],
              "per_group": per_group, "num_unparsed": sum(row["prediction"] is None for row in rows)}
    if benchmark == "vnbench":
        questions: dict[tuple[str, str], list[bool]] = {}
        for row in rows:
            questions.setdefault((row["group"], row["question_key"]), []).append(row["correct"])
        official = {g: _accuracy([all(v) for (group, _), v in questions.items() if group == g]) for g in groups}
        families = sorted({g.split("_")[0] for g in groups})
        result["per_group_4try"] = official
        result["accuracy_4try"] = sum(v["accuracy"] for v in official.values()) / len(official)
        result["per_task_4try"] = {f: _accuracy([all(v) for (g, _), v in questions.items() if g.split("_")[0] == f])
                                   for f in families}
    result["items"] = rows
    return result


def _group_order(group: str):
    """Numeric groups (durations) by value, others alphabetically."""
    return (0, float(group), "") if re.fullmatch(r"\d+(\.\d+)?", group) else (1, 0.0, group)


def write_results(results: dict, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")


def run_benchmark(benchmark: str, annotation_path, video_dir, answer: AnswerFn, out_path=None,
                  limit: int | None = None) -> dict:
    """Load `benchmark`'s annotations, evaluate `answer` (on the first `limit` items) and save JSON."""
    loaders = {"vnbench": load_vnbench, "longvideobench": load_longvideobench}
    if benchmark not in loaders:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    items = loaders[benchmark](annotation_path, video_dir)
    results = evaluate(items[:limit] if limit else items, answer, benchmark)
    if out_path is not None:
        write_results(results, out_path)
    return results
