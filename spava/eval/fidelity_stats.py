"""Scores of the fidelity runs: per-unit sums from final hidden states, and paired bootstrap intervals.

Runs in the parent process after the ranks finished, on one device, with the model's last norm and
LM head only. Per case, full attention's log-probabilities at the scored positions are computed
once and every configuration is compared with them position by position:

  background positions  KL(full || config) in nats, top-1 agreement with full, next-token accuracy
                        (argmax == the document's next token);
  recall tokens         accuracy (argmax == the recalled value's token) and its log-probability.

Positions are grouped into bootstrap units (a recalled value; a run of `BACKGROUND_UNIT` consecutive
scored background positions) and only per-unit sums are kept. `paired_interval` resamples units
within each case (stratified, paired: the same resample for both configurations), so that a
difference between two configurations gets the interval of the difference, not of each side.
"""

from __future__ import annotations

import torch

BACKGROUND_UNIT = 32  # scored positions per bootstrap unit of natural text
SUM_KEYS = ("n", "kl", "agree", "correct", "logp")


def log_probs(norm, lm_head, hidden: torch.Tensor, device, batch: int = 256) -> torch.Tensor:
    """`[n, d]` final hidden states -> `[n, vocab]` float32 log-probabilities (batched)."""
    pieces = []
    with torch.inference_mode():
        for start in range(0, hidden.shape[0], batch):
            rows = hidden[start: start + batch].to(device=device, dtype=next(lm_head.parameters()).dtype)
            pieces.append(torch.log_softmax(lm_head(norm(rows)).float(), dim=-1).cpu())
    return torch.cat(pieces) if pieces else torch.empty(0)


def position_scores(ref_logp: torch.Tensor, logp: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per position: KL(ref || this) `[n]`, top-1 agreement, accuracy against `targets`, log p(target)."""
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).clamp_min(0.0)
    top = logp.argmax(-1)
    return {"kl": kl.double(), "agree": (top == ref_logp.argmax(-1)).double(), "correct": (top == targets).double(),
            "logp": logp.gather(1, targets[:, None])[:, 0].double()}


def unit_sums(scores: dict[str, torch.Tensor], unit_of: list[str]) -> dict[str, dict[str, float]]:
    """Sum the per-position scores over units: {unit: {"n", "kl", "agree", "correct", "logp"}}."""
    sums: dict[str, dict[str, float]] = {}
    for index, unit in enumerate(unit_of):
        entry = sums.setdefault(unit, dict.fromkeys(SUM_KEYS, 0.0))
        entry["n"] += 1
        for key in SUM_KEYS[1:]:
            entry[key] += float(scores[key][index])
    return sums


def background_units(case_name: str, positions) -> list[str]:
    """Unit name of each scored background position: runs of BACKGROUND_UNIT consecutive ones."""
    return [f"{case_name}/bg{index // BACKGROUND_UNIT}" for index in range(len(positions))]


def _stack(units: dict[str, dict[str, float]], names: list[str]) -> torch.Tensor:
    return torch.tensor([[units[name][key] for key in SUM_KEYS] for name in names], dtype=torch.float64)


def _ratio(sums: torch.Tensor, key: str) -> torch.Tensor:
    return sums[..., SUM_KEYS.index(key)] / sums[..., 0].clamp_min(1.0)


def paired_interval(this: dict, ref: dict | None, key: str, *, num_resamples: int = 2000, seed: int = 0,
                    scale: float = 1.0) -> dict:
    """Mean of `key` per scored position (and minus `ref`'s when given) with a 95% bootstrap interval.

    Args:
        this, ref: {case: {unit: sums}} of two configurations over the same cases and units.
        scale: multiplies the result (100 for percentages).
    Returns:
        {"value", "low", "high", "num_units"}; None values when there is no unit.
    """
    cases = sorted(this)
    if not cases or not any(this[c] for c in cases):
        return {"value": None, "low": None, "high": None, "num_units": 0}
    generator = torch.Generator().manual_seed(seed)
    total_this = torch.zeros(num_resamples + 1, len(SUM_KEYS), dtype=torch.float64)
    total_ref = torch.zeros_like(total_this)
    num_units = 0
    for case in cases:
        names = sorted(this[case])
        if not names:
            continue
        num_units += len(names)
        values = _stack(this[case], names)
        draws = torch.randint(len(names), (num_resamples, len(names)), generator=generator)
        total_this[0] += values.sum(0)
        total_this[1:] += values[draws].sum(1)
        if ref is not None:
            ref_values = _stack(ref[case], names)
            total_ref[0] += ref_values.sum(0)
            total_ref[1:] += ref_values[draws].sum(1)
    estimate = _ratio(total_this, key)
    if ref is not None:
        estimate = estimate - _ratio(total_ref, key)
    estimate = estimate * scale
    low, high = torch.quantile(estimate[1:], torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"value": float(estimate[0]), "low": low, "high": high, "num_units": num_units}


def selection_coverage(selections: list, sources: list[tuple[int, int]]) -> float | None:
    """Fraction of the needle value tokens (`sources`: global ranges) that the chunk holding them
    passed, averaged over layers, KV heads and values; None when no selection covers a source."""
    fractions = []
    for start, stop in sources:
        for _, chunk_start, chunk_stop, indices in selections:
            if chunk_start <= start and stop <= chunk_stop:
                wanted = torch.arange(start, stop)
                for head in range(indices.shape[1]):
                    fractions.append(float(torch.isin(wanted, indices[:, head].long()).double().mean()))
    return sum(fractions) / len(fractions) if fractions else None
