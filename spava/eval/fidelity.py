"""Answer fidelity of the approximate sequence-parallel methods against full attention, real weights.

Two kinds of cases, built once in the parent process from the model's tokenizer:
  passkey  filler text ("The grass is green. ...") with a needle ("The pass key is 71432. Remember
           it. 71432 is the pass key.") at a relative depth; the query asks for the pass key; greedy
           decoding of a few tokens; correct when the number appears in the answer.
  text     a window of natural English (the license texts under /usr/share/common-licenses, else
           Python standard-library docstrings) cut at K points; the last `num_text_query` tokens are
           the query; the method's last-token distribution is compared with full attention's.
Every configuration (`full` on W=1, each approximate method on each W) runs all cases inside one
spawn of W gloo ranks (one start-up per W). The decode rank writes each case's generated tokens and
last-prompt-token logits; the parent scores them: passkey accuracy, answer agreement with full,
top-1 agreement and KL(full || method) of the last-token distributions.

Output of `run_fidelity(spec)`: a JSON-able dict (settings, effective attention sizes, per-config
summaries, per-case rows) that `format_markdown` renders as tables.
"""

from __future__ import annotations

import glob
import inspect
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spava.attention.config import AttentionConfig, num_selected, resolve_passing_len
from spava.attention.registry import get_method
from spava.comm.collectives import SPComm, end_spawned_rank
from spava.models.generation import SamplingParams
from spava.models.inputs import PromptInputs
from spava.models.runner import ModelRunner
from spava.models.text_lm import TextLM, build_text_inputs

FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
INTRO = ("There is important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
# "Answer with the number only." keeps the 135M model from drifting into a definition of pass keys
# (measured with full attention, the baseline; it does not favour any method).
QUESTION = "What is the pass key? Answer with the number only."
LICENSE_GLOB = "/usr/share/common-licenses/*"
STDLIB_MODULES = ("argparse", "asyncio", "collections", "dataclasses", "decimal", "email", "functools",
                  "inspect", "itertools", "json", "logging", "os", "pathlib", "pickle", "re", "shutil",
                  "socket", "subprocess", "threading", "typing", "unittest", "urllib.request", "zipfile")
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class FidelitySpec:
    """What to run. `round_to=None` keeps each method's default (128, the paper's)."""

    model_dir: str
    lengths: tuple[int, ...] = (2048, 4096)
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    world_sizes: tuple[int, ...] = (2, 4)
    methods: tuple[str, ...] = ("spava", "apb", "star")
    num_text_cuts: int = 2
    num_text_query: int = 16
    max_new_tokens: int = 12
    round_to: int | None = None
    seed: int = 0
    num_threads: int = 1  # per rank; 1 because ranks >= cores and oversubscribed OpenMP threads stall

    def __post_init__(self) -> None:
        if any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise ValueError(f"depths must lie in [0, 1], got {self.depths}")
        if any(w < 2 for w in self.world_sizes):
            raise ValueError(f"world_sizes are for the sequence-parallel runs and must be >= 2, got {self.world_sizes}")
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")
        if min(self.lengths) < 256:
            raise ValueError(f"lengths must be >= 256 tokens, got {self.lengths}")

    def attention_config(self, method: str) -> AttentionConfig:
        extra = {} if self.round_to is None else {"round_to": self.round_to}
        return AttentionConfig(method=method, backend="torch_cpu", **extra)


@dataclass
class FidelityCase:
    """One prompt. `passkey` is the expected answer (passkey cases) or None (text cases)."""

    name: str
    kind: str  # "passkey" | "text"
    length: int  # target length in tokens (the prompt has at most this many)
    inputs: PromptInputs
    depth: float | None = None
    passkey: str | None = None


def passkey_document(num_filler: int, depth: float, passkey: str) -> str:
    """INTRO, then `num_filler` filler sentences with the needle inserted at relative `depth`."""
    sentences = [FILLER[i % len(FILLER)] for i in range(num_filler)]
    sentences.insert(round(depth * num_filler), NEEDLE.format(key=passkey))
    return INTRO + "\n\n" + " ".join(sentences)


def build_passkey_case(tokenizer, length: int, depth: float, passkey: str) -> FidelityCase:
    """The longest passkey prompt of at most `length` tokens (filler count fitted by measuring)."""
    def measure(num_filler: int) -> PromptInputs:
        return build_text_inputs(tokenizer, passkey_document(num_filler, depth, passkey), QUESTION)[0]

    per_sentence = sum(len(tokenizer(" " + s, add_special_tokens=False)["input_ids"]) for s in FILLER) / len(FILLER)
    num_filler = max(1, int((length - measure(1).num_tokens) / per_sentence))
    inputs = measure(num_filler)
    while inputs.num_tokens > length and num_filler > 1:
        num_filler -= max(1, int((inputs.num_tokens - length) / per_sentence))
        inputs = measure(max(1, num_filler))
    name = f"passkey_L{length}_d{round(depth * 100):03d}"
    return FidelityCase(name, "passkey", length, inputs, depth=depth, passkey=passkey)


def natural_text() -> tuple[str, list[str]]:
    """(long natural English text, its sources): license texts, else stdlib docstrings."""
    paths = sorted({os.path.realpath(p) for p in glob.glob(LICENSE_GLOB) if os.path.isfile(p)})
    pieces, sources = [], []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as handle:
            pieces.append(handle.read())
        sources.append(path)
    if sum(map(len, pieces)) < 200_000:  # not a Debian-like system: fall back to docstrings
        import importlib

        for name in STDLIB_MODULES:
            pieces.append(inspect.getdoc(importlib.import_module(name)) or "")
            sources.append(f"python stdlib docstring: {name}")
    return "\n\n".join(pieces), sources


def build_text_cases(tokenizer, corpus_ids: list[int], length: int, num_cuts: int,
                     num_query: int) -> list[FidelityCase]:
    """`num_cuts` windows of `length` tokens spread evenly over the corpus; the last `num_query` are the query."""
    if len(corpus_ids) < length:
        raise ValueError(f"the natural-text corpus has {len(corpus_ids)} tokens, fewer than length={length}; "
                         "lower --lengths")
    span = len(corpus_ids) - length
    starts = [round(span * (k + 0.5) / num_cuts) for k in range(num_cuts)]
    cases = []
    for start in starts:
        ids = torch.tensor(corpus_ids[start: start + length], dtype=torch.long)
        inputs = PromptInputs(input_ids=ids, position_ids=torch.arange(length), num_query_tokens=num_query)
        cases.append(FidelityCase(f"text_L{length}_at{start}", "text", length, inputs))
    return cases


def build_cases(tokenizer, spec: FidelitySpec) -> tuple[list[FidelityCase], list[str]]:
    """All passkey and text cases of `spec` (passkeys drawn from `spec.seed`), and the text sources."""
    rng = random.Random(spec.seed)
    cases = []
    for length in spec.lengths:
        cases += [build_passkey_case(tokenizer, length, d, str(rng.randint(10000, 99999))) for d in spec.depths]
    text, sources = natural_text()
    if spec.num_text_cuts > 0:
        corpus_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        for length in spec.lengths:
            cases += build_text_cases(tokenizer, corpus_ids, length, spec.num_text_cuts, spec.num_text_query)
    return cases, sources


def effective_sizes(spec: FidelitySpec, method: str, case: FidelityCase, world_size: int) -> dict:
    """Anchor, chunk and passing sizes the method actually uses on this prompt (rank 0's plan)."""
    config = spec.attention_config(method)
    inputs = case.inputs
    plan = get_method(config).plan(inputs.num_tokens, inputs.num_query_tokens, world_size, 0)
    chunks = [stop - start for start, stop in plan.chunks]
    sizes = {"context_len": plan.context_len, "anchor_len": plan.anchor_len, "round_to": config.round_to,
             "chunk_len": [min(chunks), max(chunks)]}
    if method in ("spava", "apb"):
        budget = resolve_passing_len(config, plan.context_len)
        passed = [num_selected(budget, c, config.round_to) for c in chunks]
        sizes.update(passing_budget=budget, passing_per_chunk=[min(passed), max(passed)])
    return sizes


def _run_case(runner: ModelRunner, case: FidelityCase, spec: FidelitySpec, eos_ids) -> dict | None:
    """Run one case; the decode rank returns {tokens, logits, prefill_s}, the others None."""
    start = time.perf_counter()
    if case.kind == "passkey":
        out = runner.generate(case.inputs, SamplingParams(max_new_tokens=spec.max_new_tokens), eos_token_ids=eos_ids)
        tokens, logits = out.token_ids, out.first_token_logits
    else:
        state = runner.prefill(case.inputs)
        tokens, logits = [], state.logits
    if logits is None:
        return None
    return {"tokens": tokens, "logits": logits.float().cpu(), "seconds": time.perf_counter() - start}


def _rank_main(rank: int, world_size: int, init_file: str, spec: FidelitySpec, methods, cases, result_dir: str) -> None:
    """One rank: run every (method, case) and save the decode rank's results to `result_dir`."""
    torch.set_num_threads(spec.num_threads)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    model = TextLM.from_pretrained(spec.model_dir, load_tokenizer=False)
    for method in methods:
        runner = ModelRunner(model, get_method(spec.attention_config(method)), SPComm())
        for case in cases:
            result = _run_case(runner, case, spec, model.eos_token_ids())
            if result is not None:
                torch.save(result, os.path.join(result_dir, f"{method}_W{world_size}_{case.name}.pt"))
                print(f"  {method:>6} W={world_size} {case.name:<22} {result['seconds']:6.1f} s", flush=True)
    end_spawned_rank()


def run_configs(spec: FidelitySpec, world_size: int, methods, cases, result_dir: str) -> float:
    """Spawn `world_size` gloo ranks that run `methods` x `cases`; returns the wall time in seconds."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_rank_main, args=(world_size, os.path.join(tmp, "init"), spec, methods, cases, result_dir),
                           nprocs=world_size, start_method="spawn")
    return time.perf_counter() - start


def kl_divergence(ref_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """KL(p_ref || p) in nats of two `[vocab]` logit vectors (float64)."""
    log_p = torch.log_softmax(ref_logits.double(), dim=-1)
    log_q = torch.log_softmax(logits.double(), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum())


def score_case(case: FidelityCase, result: dict, reference: dict, decode) -> dict:
    """Per-case row: answer text, correctness, agreement and KL against the full-attention reference."""
    row = {"case": case.name, "kind": case.kind, "length": case.length, "num_tokens": case.inputs.num_tokens,
           "kl_vs_full": kl_divergence(reference["logits"], result["logits"]),
           "top1_agrees": int(result["logits"].argmax()) == int(reference["logits"].argmax()),
           "seconds": result["seconds"]}
    if case.kind == "passkey":
        answer = decode(result["tokens"], skip_special_tokens=True)
        row.update(depth=case.depth, passkey=case.passkey, answer=answer, correct=case.passkey in answer,
                   same_answer_as_full=result["tokens"] == reference["tokens"])
    return row


def summarize(rows: list[dict]) -> dict:
    """Accuracy (%) per length and overall, answer agreement, and KL / top-1 on text and passkey cases."""
    passkey = [r for r in rows if r["kind"] == "passkey"]
    text = [r for r in rows if r["kind"] == "text"]
    lengths = sorted({r["length"] for r in passkey})
    return {
        "passkey_accuracy": _percent(passkey, "correct"),
        "passkey_accuracy_by_length": {str(n): _percent([r for r in passkey if r["length"] == n], "correct")
                                       for n in lengths},
        "passkey_correct": sum(r["correct"] for r in passkey), "passkey_total": len(passkey),
        "answer_agreement_with_full": _percent(passkey, "same_answer_as_full"),
        "passkey_first_token_kl_mean": _mean([r["kl_vs_full"] for r in passkey]),
        "text_kl_mean": _mean([r["kl_vs_full"] for r in text]),
        "text_kl_max": max((r["kl_vs_full"] for r in text), default=None),
        "text_top1_agreement": _percent(text, "top1_agrees"),
    }


def _percent(rows: list[dict], key: str) -> float | None:
    return 100.0 * sum(bool(r[key]) for r in rows) / len(rows) if rows else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def collect(spec: FidelitySpec, configs, cases, result_dir: str, decode) -> list[dict]:
    """Score every (method, W) config against full (W=1); one summary dict per config."""
    def load(method: str, world_size: int, case: FidelityCase) -> dict:
        return torch.load(os.path.join(result_dir, f"{method}_W{world_size}_{case.name}.pt"))

    references = {case.name: load("full", 1, case) for case in cases}
    summaries = []
    for method, world_size in configs:
        rows = [score_case(case, load(method, world_size, case), references[case.name], decode) for case in cases]
        sizes = {} if method == "full" else {
            str(n): effective_sizes(spec, method, next(c for c in cases if c.length == n), world_size)
            for n in spec.lengths}
        summaries.append({"method": method, "world_size": world_size, **summarize(rows),
                          "effective_sizes": sizes, "cases": rows})
    return summaries


def run_fidelity(spec: FidelitySpec, log=print) -> dict:
    """Build the cases, run full (W=1) and every method on every W, and score them."""
    model = TextLM.from_pretrained(spec.model_dir)
    if model.tokenizer is None:
        raise ValueError(f"{spec.model_dir!r} has no tokenizer files; the fidelity cases need one")
    cases, sources = build_cases(model.tokenizer, spec)
    log(f"{len(cases)} cases: {', '.join(c.name for c in cases)}")
    walls, configs = {}, [("full", 1)]
    with tempfile.TemporaryDirectory() as result_dir:
        for world_size, methods in [(1, ("full",))] + [(w, spec.methods) for w in spec.world_sizes]:
            log(f"W={world_size}: {', '.join(methods)}")
            walls[str(world_size)] = run_configs(spec, world_size, methods, cases, result_dir)
            configs += [(m, world_size) for m in methods if world_size > 1]
        summaries = collect(spec, configs, cases, result_dir, model.tokenizer.decode)
    return {"spec": asdict(spec), "num_parameters": sum(p.numel() for p in model.hf.parameters()),
            "text_sources": sources, "wall_s_per_world_size": walls, "configs": summaries}


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _summary_table(configs: list[dict], lengths: list[str]) -> list[str]:
    full = next(c for c in configs if c["method"] == "full")
    head = ["method", "W"] + [f"passkey acc @{n}" for n in lengths] + [
        "passkey acc (all)", "Δ vs full (points)", "same answer as full", "KL 1st answer token",
        "text KL mean", "text KL max", "text top-1 = full"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in configs:
        by_length = [_fmt(c["passkey_accuracy_by_length"].get(n)) for n in lengths]
        delta = c["passkey_accuracy"] - full["passkey_accuracy"]
        cells = [c["method"], str(c["world_size"]), *by_length,
                 f"{_fmt(c['passkey_accuracy'])} ({c['passkey_correct']}/{c['passkey_total']})", f"{delta:+.1f}",
                 f"{_fmt(c['answer_agreement_with_full'])}%", _fmt(c["passkey_first_token_kl_mean"], 4),
                 _fmt(c["text_kl_mean"], 4), _fmt(c["text_kl_max"], 4), f"{_fmt(c['text_top1_agreement'])}%"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _span(pair: list[int]) -> str:
    return f"{pair[0]}" if pair[0] == pair[1] else f"{pair[0]}-{pair[1]}"


def _sizes_table(configs: list[dict]) -> list[str]:
    head = ["method", "W", "prompt length", "context L", "anchor A", "chunk len", "passing budget P",
            "passed per chunk"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in configs:
        for length, s in c["effective_sizes"].items():
            cells = [c["method"], str(c["world_size"]), length, str(s["context_len"]), str(s["anchor_len"]),
                     _span(s["chunk_len"]), str(s.get("passing_budget", "-")),
                     _span(s["passing_per_chunk"]) if "passing_per_chunk" in s else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _answers_table(configs: list[dict]) -> list[str]:
    head = ["case", "pass key"] + [f"{c['method']} W={c['world_size']}" for c in configs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [r for r in configs[0]["cases"] if r["kind"] == "passkey"]
    for index, row in enumerate(rows):
        marks = []
        for c in configs:
            other = c["cases"][index]
            answer = other["answer"].replace("|", "/").replace("\n", " ").strip()
            marks.append(("✓ " if other["correct"] else "✗ ") + f"`{answer[:28]}`")
        lines.append("| " + " | ".join([row["case"], row["passkey"], *marks]) + " |")
    return lines


# True by construction, whatever the numbers: what a reader needs to interpret the tables.
READING_NOTES = (
    "Every method computes the query rows (question + assistant prefix) exactly over all keys; the methods "
    "differ only in how context tokens attend to earlier context, so an error reaches the answer only through "
    "the context K/V of later layers.",
    "`star` on W=2 is exact by construction: rank 1's anchor is block 0, i.e. all of its earlier context "
    "(KL 0 is expected there).",
    "KL(full || method) is the fine-grained measure; passkey accuracy and top-1 agreement over a few cases "
    "move in steps of 1/n.",
)


def format_markdown(results: dict, header: list[str]) -> str:
    """FIDELITY.md: `header` lines (command, machine, model), the summary, sizes and answers tables."""
    configs = results["configs"]
    lengths = [str(n) for n in results["spec"]["lengths"]]
    notes = [f"- {note}" for note in READING_NOTES]
    parts = header + ["", "## Summary", "", *_summary_table(configs, lengths), "", *notes, "",
                      "## Effective attention sizes (defaults; rank 0's plan)", "", *_sizes_table(configs[1:]), "",
                      "## Passkey answers (greedy)", "", *_answers_table(configs), ""]
    return "\n".join(parts)
