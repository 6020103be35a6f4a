"""Markdown of a fidelity run (`run_fidelity`'s dict): sizes, results with intervals, paired
comparisons of spava against every other configuration, computed verdicts, and the answers.

Pure formatting of the results dict (no torch), in the launching process.
"""

from __future__ import annotations

from spava.eval.fidelity import RECALL_TASKS
from spava.eval.fidelity_configs import CONTROL_LABELS

TARGET_POINTS = 2.0  # spava should stay within this many points of full on the recall tasks

READING_NOTES = (
    "Every method computes the query rows (question + assistant prefix) exactly over all keys, so the answer "
    "to the question is affected only through the context K/V of later layers; passkey-style retrieval barely "
    "separates the methods. The scores here come from the context rows themselves.",
    "Recall: each needle's value is restated, teacher-forced, in the last quarter of the document; "
    "the logits that predict its tokens come from a context row in a late chunk, which can copy the value only "
    "if the needle's tokens were passed to it (or lie in its anchor or chunk). Variable tracking additionally "
    "needs the link 'VAR Y = VAR X' from a middle chunk. Accuracy: argmax = the value's token; log p: mean "
    "log-probability of the value's tokens (nats), which moves before the argmax does.",
    "Background: natural-text positions in the last 7/8 of each document (inserted sentences excluded): "
    "KL(full || method) in nats, top-1 agreement with full, and next-token accuracy.",
    "Intervals: 95% bootstrap over units (a recalled value; 32 consecutive scored background positions), "
    "resampled within each case; differences are paired (the same resample for both sides).",
    "Needle tokens passed: of each needle's value tokens (and of its whole sentence), the fraction its chunk "
    "selected, averaged over layers, KV heads and needles (needles in the anchor are not counted). Random "
    "selection passes about the 'passed per chunk' fraction.",
)


def _number(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(stat: dict | None, digits: int = 1, signed: bool = False) -> str:
    if not stat or stat.get("value") is None:
        return "-"
    sign = "+" if signed else ""
    return (f"{stat['value']:{sign}.{digits}f} [{stat['low']:{sign}.{digits}f}, {stat['high']:{sign}.{digits}f}]")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def sizes_table(results: dict) -> list[str]:
    head = ["configuration", "settings", "W", "prompt tokens", "anchor A", "passing P", "chunk", "pairs kept",
            "passed per chunk"]
    rows = []
    for s in results["sizes"]:
        chunk = s["chunk_len"]
        rows.append([s["label"], s["settings"], str(s["world_size"]), str(s["num_tokens"]), str(s["anchor_len"]),
                     "-" if s["passing_len"] is None else str(s["passing_len"]),
                     f"{chunk[0]}" if chunk[0] == chunk[1] else f"{chunk[0]}-{chunk[1]}",
                     _percent(s["pairs"]), _percent(s["passed"])])
    return _table(head, rows)


def _coverage(results: dict, label: str, part: str):
    """Mean over cases of the passed fraction of the needles' `part` ("value" or "sentence") tokens."""
    values = [v[part] for v in results["coverage"].get(label, {}).values() if v[part] is not None]
    return sum(values) / len(values) if values else None


def _tasks(results: dict) -> list[str]:
    return [t for t in RECALL_TASKS if any(f"{t}_recall" in s for s in results["summaries"])]


def background_table(results: dict) -> list[str]:
    pairs = {s["label"]: s["pairs"] for s in results["sizes"]}  # the longest length's
    head = ["configuration", "pairs kept", "KL vs full (nats)", "top-1 = full %", "next-token acc %",
            "Δ acc vs full (points)"]
    rows = [[s["label"], _percent(pairs.get(s["label"])), _interval(s["kl"], 3), _interval(s["top1_agreement"]),
             _interval(s["next_token_accuracy"]), _interval(s["next_token_accuracy_vs_full"], signed=True)]
            for s in results["summaries"]]
    return _table(head, rows)


def recall_table(results: dict) -> list[str]:
    tasks = _tasks(results)
    head = (["configuration"] + [f"{t} recall %" for t in tasks] + [f"{t} log p" for t in tasks]
            + ["needle value tokens passed", "needle sentence tokens passed", "answers right"])
    rows = [[s["label"]] + [_interval(s.get(f"{t}_recall")) for t in tasks]
            + [_interval(s.get(f"{t}_logp"), 2) for t in tasks]
            + [_percent(_coverage(results, s["label"], "value")), _percent(_coverage(results, s["label"], "sentence")),
               f"{s['answers_correct']}/{s['answers_total']}"]
            for s in results["summaries"]]
    return _table(head, rows)


def paired_table(results: dict) -> list[str]:
    tasks = _tasks(results)
    head = (["spava minus", "background KL", "next-token acc (points)"] + [f"{t} recall (points)" for t in tasks]
            + [f"{t} log p (nats)" for t in tasks])
    rows = []
    for s in results["summaries"]:
        diff = s.get("spava_minus_this")
        if diff:
            rows.append([s["label"], _interval(diff["kl"], 3, signed=True),
                         _interval(diff["next_token_accuracy"], signed=True)]
                        + [_interval(diff.get(f"{t}_recall"), signed=True) for t in tasks]
                        + [_interval(diff.get(f"{t}_logp"), 2, signed=True) for t in tasks])
    return _table(head, rows)


def verdicts(results: dict) -> list[str]:
    """Sentences that follow from the intervals: spava against full (within TARGET_POINTS?) and
    against every control (better by more than the interval?)."""
    by_label = {s["label"]: s for s in results["summaries"]}
    spava = by_label.get("spava")
    if spava is None:
        return []
    lines = []
    for task in _tasks(results):
        delta = spava.get(f"{task}_recall_vs_full")
        if not delta or delta.get("value") is None:
            continue
        ok = delta["low"] >= -TARGET_POINTS
        lines.append(f"{task}: spava vs full {_interval(delta, signed=True)} points: "
                     + ("within" if ok else "NOT within") + f" {TARGET_POINTS:.0f} points of full.")
    delta = spava["next_token_accuracy_vs_full"]
    if delta.get("value") is not None:
        ok = delta["low"] >= -TARGET_POINTS
        lines.append(f"background next-token accuracy: spava vs full {_interval(delta, signed=True)} points: "
                     + ("within" if ok else "NOT within") + f" {TARGET_POINTS:.0f} points of full.")
    for label in CONTROL_LABELS:
        diff = by_label.get(label, {}).get("spava_minus_this")
        if not diff:
            continue
        parts = []
        for task in _tasks(results):
            stat, logp = diff.get(f"{task}_recall"), diff.get(f"{task}_logp")
            if stat and stat.get("value") is not None:
                parts.append(f"{task} recall {'better' if stat['low'] > 0 else 'not better'} "
                             f"({_interval(stat, signed=True)} points), log p "
                             f"{'higher' if logp['low'] > 0 else 'not higher'} ({_interval(logp, 2, signed=True)})")
        kl = diff["kl"]
        if kl.get("value") is not None:
            parts.append(f"background KL {'lower' if kl['high'] < 0 else 'not lower'} "
                         f"({_interval(kl, 3, signed=True)})")
        lines.append(f"spava vs {label}: " + "; ".join(parts) + ".")
    return lines


def answers_table(results: dict) -> list[str]:
    labels = [s["label"] for s in results["summaries"]]
    cases = [c for c in results["cases"] if c["answers"]]
    head = ["case", "expected"] + labels
    rows = []
    for case in cases:
        cells = []
        for label in labels:
            mark = results["answers"].get(label, {}).get(case["name"])
            if mark is None:
                cells.append("-")
                continue
            text = mark["answer"].replace("|", "/").replace("\n", " ").strip()
            cells.append(("✓ " if mark["correct"] else "✗ ") + f"`{text[:40]}`")
        rows.append([case["name"], ", ".join(case["answers"])] + cells)
    return _table(head, rows)


def cases_table(results: dict) -> list[str]:
    head = ["case", "tokens", "query tokens", "scored recall tokens", "scored background positions", "question"]
    rows = [[c["name"], str(c["num_tokens"]), str(c["num_query_tokens"]), str(c["num_recall_tokens"]),
             str(c["num_background"]), c["question"]] for c in results["cases"]]
    return _table(head, rows)


def timing_table(results: dict) -> list[str]:
    head = ["configuration", "prefill s per case (slowest rank, mean)"]
    rows = [[label, _number(sum(v) / len(v))] for label, v in results["prefill_s"].items() if v]
    return _table(head, rows)


def format_markdown(results: dict, header: list[str], notes: list[str] | None = None) -> str:
    """The report: `header` lines (command, machine, model), optional `notes` (the author's reading),
    then every table."""
    parts = list(header)
    if notes:
        parts += ["", *notes]
    parts += ["", "## Recall of the needles (teacher-forced, context rows)", "", *recall_table(results), "",
              "## Natural text (next-token predictions of context rows)", "", *background_table(results), "",
              "## spava against each configuration (paired differences, spava minus the row)", "",
              *paired_table(results), "", "Computed from the intervals above:", "",
              *[f"- {line}" for line in verdicts(results)], "",
              "## How to read these numbers", "", *[f"- {note}" for note in READING_NOTES], "",
              "## How much of causal attention each configuration keeps", "", *sizes_table(results), "",
              "## Cases", "", *cases_table(results), "",
              "## Answers to the questions (greedy)", "", *answers_table(results), "",
              "## Prefill time", "", *timing_table(results), ""]
    return "\n".join(parts)
