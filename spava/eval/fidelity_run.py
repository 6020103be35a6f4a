"""Running the fidelity cases: W spawned ranks per world size, every configuration x every case.

Each rank loads the model through its family (`ModelFamily.build`: a text LM, Qwen2.5-VL, ...) on
its device (CPU + gloo, or `cuda:rank` + NCCL), then for every (configuration, case) runs the real
prefill (`ModelRunner.prefill`, keeping the final hidden states and, for approximate methods, the
passing selections) and, for cases with a question, greedy decoding of the answer. It writes one
file per (configuration, case, rank) into the work directory:

    positions  `[n]` int64  the case's scored positions that this rank owns (each position once overall)
    hidden     `[n, d]` float32  their final hidden states (before the last norm)
    tokens     the generated answer's token ids (decode rank; [] elsewhere)
    selections [(layer, start, stop, indices `[k, Hkv]` int32)]  this rank's passing choices
    prefill_s  this rank's prefill wall time

File names carry the case's fingerprint (prompt and scored positions). Files that already exist are
not recomputed, so an interrupted run resumes where it stopped, and a run with more cases or
configurations computes only what is new.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spava.attention.registry import get_method
from spava.attention.selection_log import SelectionLog
from spava.comm.collectives import SPComm, end_spawned_rank
from spava.config import ModelConfig
from spava.eval.fidelity_configs import NamedConfig
from spava.eval.fidelity_tasks import FidelityCase
from spava.models.family import get_family
from spava.models.generation import SamplingParams
from spava.models.runner import ModelRunner


@dataclass(frozen=True)
class RunSettings:
    """What every rank needs besides the configurations and cases (picklable)."""

    model: dict  # ModelConfig fields, model.path already resolved
    device: str  # "cpu" | "cuda"
    attention_backend: str
    num_threads: int
    max_new_tokens: int
    eos_token_ids: tuple[int, ...]


def result_path(work_dir: str, label: str, case: FidelityCase, rank: int) -> str:
    """One rank's file of (configuration, case); the case's fingerprint keeps results of an older
    version of a case from being reused."""
    name = f"{label.replace(' ', '_').replace(',', '')}__{case.name}__{case.fingerprint}__r{rank}.pt"
    return os.path.join(work_dir, name)


def _is_done(work_dir: str, label: str, case: FidelityCase, world_size: int) -> bool:
    return all(os.path.isfile(result_path(work_dir, label, case, r)) for r in range(world_size))


def _owned_rows(state, scored: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(global positions `[n]`, final hidden `[n, d]`) of the scored positions this rank owns."""
    plan = state.plan
    ids = plan.local_token_ids()
    owned = torch.zeros(ids.numel(), dtype=torch.bool)
    for start, stop in plan.owned_local_ranges():
        owned[start:stop] = True
    rows = (owned & torch.isin(ids, scored)).nonzero().flatten()
    return ids[rows], state.final_hidden[rows.to(state.final_hidden.device)].float().cpu()


def run_case(runner: ModelRunner, case: FidelityCase, settings: RunSettings, record: bool) -> dict:
    """One prefill (+ answer) of `case` on this rank; the dict that `run_ranks` saves."""
    log = SelectionLog(keep_scores=False) if record else None
    start = time.perf_counter()
    state = runner.prefill(case.inputs, max_new_tokens=settings.max_new_tokens, keep_hidden=True, selections=log)
    prefill_s = time.perf_counter() - start
    positions, hidden = _owned_rows(state, torch.tensor(case.scored_positions, dtype=torch.long))
    state.final_hidden = None
    tokens: list[int] = []
    if case.answers and settings.max_new_tokens > 0:
        params = SamplingParams(max_new_tokens=settings.max_new_tokens)
        output = runner.decode_loop(case.inputs, state, params, eos_token_ids=settings.eos_token_ids)
        tokens = output.token_ids if state.plan.rank == state.plan.decode_rank else []
    selections = [(e.layer_idx, e.start, e.stop, e.indices.to(torch.int32)) for e in (log.entries if log else [])]
    return {"positions": positions, "hidden": hidden, "tokens": tokens, "selections": selections,
            "prefill_s": prefill_s}


def _rank_main(rank: int, world_size: int, init_file: str, settings: RunSettings, configs: list[NamedConfig],
               cases: list[FidelityCase], work_dir: str, log_prefix: str) -> None:
    is_cuda = settings.device == "cuda"
    device = f"cuda:{rank}" if is_cuda else "cpu"
    torch.set_num_threads(settings.num_threads)
    if is_cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if is_cuda else "gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    adapter = get_family(ModelConfig(**settings.model)).build(("text",), device)
    for named in configs:
        method = get_method(named.attention_config(settings.attention_backend))
        runner = ModelRunner(adapter, method, SPComm(), use_cuda_graph=False)
        for case in cases:
            if _is_done(work_dir, named.label, case, world_size):
                continue
            result = run_case(runner, case, settings, record=not method.is_exact)
            path = result_path(work_dir, named.label, case, rank)
            torch.save(result, path + ".tmp")
            os.replace(path + ".tmp", path)
            if rank == 0:
                print(f"{log_prefix}{named.label:>28} W={world_size} {case.name:<24} prefill "
                      f"{result['prefill_s']:6.1f} s", flush=True)
    end_spawned_rank()


def run_ranks(settings: RunSettings, world_size: int, configs: list[NamedConfig], cases: list[FidelityCase],
              work_dir: str, log_prefix: str = "  ") -> float:
    """Spawn `world_size` ranks that run `configs` x `cases` into `work_dir`; returns the wall time (s)."""
    start = time.perf_counter()
    todo = [c for c in configs if not all(_is_done(work_dir, c.label, case, world_size) for case in cases)]
    if todo:
        with tempfile.TemporaryDirectory() as tmp:
            mp.start_processes(_rank_main, args=(world_size, os.path.join(tmp, "init"), settings, todo, cases,
                                                 work_dir, log_prefix),
                               nprocs=world_size, start_method="spawn")
    return time.perf_counter() - start


def load_result(work_dir: str, label: str, case: FidelityCase, world_size: int) -> dict:
    """Every rank's file of one (configuration, case) merged: positions sorted, hidden rows, the
    decode rank's tokens, all ranks' selections, and the slowest rank's prefill time."""
    parts = [torch.load(result_path(work_dir, label, case, r), weights_only=True) for r in range(world_size)]
    positions = torch.cat([p["positions"] for p in parts])
    hidden = torch.cat([p["hidden"] for p in parts])
    order = positions.argsort()
    tokens = next((p["tokens"] for p in parts if p["tokens"]), [])
    return {"positions": positions[order], "hidden": hidden[order], "tokens": tokens,
            "selections": [s for p in parts for s in p["selections"]],
            "prefill_s": max(p["prefill_s"] for p in parts)}
