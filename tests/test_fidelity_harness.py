"""The fidelity benchmark's pure parts: cases and where their scored tokens are, kept fractions
against a brute-force count, the control scorers, the paired bootstrap, coverage and the report."""

from __future__ import annotations

import math

import pytest
import torch

from _text_helpers import CharTokenizer
from spava.attention.config import AttentionConfig
from spava.eval.control_scorers import inverted_scores, random_scores
from spava.eval.fidelity_configs import (CONTROL_LABELS, default_configs, kept_fractions, reference_fractions,
                                         sparse_overrides)
from spava.eval.fidelity_stats import paired_interval, position_scores, selection_coverage, unit_sums
from spava.eval.fidelity_tasks import RECALL_DEPTHS, TASKS, build_case, natural_text
from spava.models.text_lm import build_text_inputs


class CharProcessor:
    """A family processor over the character tokenizer (one token per character)."""

    tokenizer = CharTokenizer()

    def build_inputs(self, question, *, document, items, system_prompt):
        return build_text_inputs(self.tokenizer, document, question)[0]


@pytest.mark.parametrize("task", TASKS)
def test_cases_place_needles_early_and_score_their_recalls_late(task):
    corpus, _ = natural_text()
    case = build_case(CharProcessor(), corpus, task, 6000, seed=1, max_background=700)
    inputs, ids = case.inputs, case.inputs.input_ids
    context_len = inputs.num_tokens - inputs.num_query_tokens
    assert 0.97 * 6000 <= inputs.num_tokens <= 6000
    assert len(case.background) == 700 and all(p + 1 < context_len for p in case.background)
    for start, stop in case.inserted:  # background positions never predict an inserted token
        assert not any(start - 1 <= p < stop for p in case.background)
    if task == "text":
        assert not case.recalls and not case.answers
        return
    assert case.recalls and case.answers
    for span in case.recalls:
        value = "".join(chr(t) for t in span.token_ids)
        assert (value.isdigit() and len(value) == 7) if task != "magicword" else value.isalpha()
        assert [int(ids[p + 1]) for p in span.positions] == list(span.token_ids)
        assert "".join(chr(int(t)) for t in ids[span.source[0]: span.source[1]]) == value
        sentence = "".join(chr(int(t)) for t in ids[span.sentence[0]: span.sentence[1]])
        assert sentence.endswith(".") and value in sentence and span.sentence[0] <= span.source[0]
        assert span.source[1] <= 0.62 * context_len + 80
        assert span.positions[0] >= (RECALL_DEPTHS[0] - 0.02) * context_len
    question = "".join(chr(int(t)) for t in ids[-inputs.num_query_tokens:])
    assert question.startswith(case.question)
    values = {"".join(chr(t) for t in span.token_ids) for span in case.recalls}
    assert set(case.answers) <= values
    if task in ("multivalue", "magicword"):
        assert len(case.recalls) == 4 and len(case.answers) == 4


def _brute_force_pairs(config: AttentionConfig, num_tokens: int, num_query: int, world_size: int) -> float:
    """Kept / causal pairs, counting each context row's keys from the method's plans."""
    from spava.attention.config import num_selected, resolve_passing_len
    from spava.attention.registry import get_method
    from spava.plan.sequence import ROLE_CHUNK

    method = get_method(config)
    plans = [method.plan(num_tokens, num_query, world_size, r) for r in range(world_size)]
    context_len = num_tokens - num_query
    budget = resolve_passing_len(method.config, context_len) if config.method != "star" else 0
    chunks = plans[0].chunks
    passed = []
    for index, (start, stop) in enumerate(chunks):
        selectable = stop - start - (plans[0].anchor_len if config.method == "apb" and index == 0 else 0)
        passed.append(num_selected(budget, selectable, config.round_to) if config.method != "star" else 0)
    kept = 0
    for row in range(context_len):
        index = next((i for i, (a, b) in enumerate(chunks) if a <= row < b), None)
        anchor = plans[-1].anchor_len
        if index is None or (config.method != "spava" and index == 0):  # anchor rows / first chunk: exact
            kept += row + 1
            continue
        assert any(seg.role == ROLE_CHUNK for seg in plans[0].segments)
        kept += anchor + sum(passed[:index]) + row - chunks[index][0] + 1
    return kept / (context_len * (context_len + 1) / 2)


@pytest.mark.parametrize("config", [
    AttentionConfig(method="spava"), AttentionConfig(method="apb"), AttentionConfig(method="star"),
    AttentionConfig(method="spava", **sparse_overrides("spava")),
    AttentionConfig(method="apb", anchor_len=30, passing_len=50, round_to=8),
    AttentionConfig(method="spava", anchor_len=0, passing_len=0, round_to=1),
])
@pytest.mark.parametrize("world_size", [2, 4])
def test_kept_fractions_match_a_brute_force_count(config, world_size):
    got = kept_fractions(config, 3001, 17, world_size)["pairs"]
    assert got == pytest.approx(_brute_force_pairs(config, 3001, 17, world_size), rel=1e-12)


def test_sparse_regime_keeps_the_148k_fractions_at_any_length():
    reference = reference_fractions("spava")
    assert reference["anchor_len"] == 2432 and reference["passing_len"] == 1280
    assert 0.20 < reference["pairs"] < 0.22 and 0.06 < reference["passed"] < 0.075
    sparse = AttentionConfig(method="spava", **sparse_overrides("spava"))
    for num_tokens in (2048, 8192, 32768):
        kept = kept_fractions(sparse, num_tokens, 24, 4)
        assert kept["pairs"] == pytest.approx(reference["pairs"], abs=0.005)
        assert kept["passed"] == pytest.approx(reference["passed"], abs=0.005)
    # the defaults are not sparse at a few thousand tokens: rounding to 128 keeps far more
    assert kept_fractions(AttentionConfig(method="spava"), 2048, 24, 4)["pairs"] > 0.6
    labels = [c.label for c in default_configs()]
    assert labels[0] == "full" and set(CONTROL_LABELS) <= set(labels)


def test_control_scorers():
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 4, 8, generator=generator), torch.randn(50, 2, 8, generator=generator)
    first, second = random_scores(q, k), random_scores(q, k)
    assert first.shape == (50, 2) and torch.equal(first, second)  # reproducible
    assert not torch.equal(first, random_scores(q, k + 1))  # other keys, other draw
    summary = q.view(5, 2, 2, 8).mean(dim=(0, 2))
    assert torch.allclose(inverted_scores(q, k), -(k * summary).sum(-1), atol=1e-5)


def _units(values: list[list[float]]) -> dict:
    """{case: {unit: sums}} with one position per unit whose `correct` is the value."""
    return {f"c{c}": {f"u{i}": {"n": 1.0, "kl": 0.0, "agree": 0.0, "correct": v, "logp": 0.0}
                      for i, v in enumerate(case)} for c, case in enumerate(values)}


def test_paired_interval_is_the_interval_of_the_difference():
    rng = torch.Generator().manual_seed(1)
    base = (torch.rand(2, 400, generator=rng) < 0.5).double()
    better = torch.where(torch.rand(2, 400, generator=rng) < 0.1, 1.0, base)  # +~5 points, strongly paired
    a, b = _units(base.tolist()), _units(better.tolist())
    alone = paired_interval(b, None, "correct", scale=100)
    diff = paired_interval(b, a, "correct", scale=100)
    assert diff["value"] == pytest.approx(100 * float((better - base).mean()))
    assert diff["low"] > 0  # the paired difference is clearly positive ...
    assert diff["high"] - diff["low"] < (alone["high"] - alone["low"]) / 2  # ... and much tighter than one side
    assert paired_interval(a, a, "correct")["value"] == 0.0
    assert paired_interval({}, None, "correct")["value"] is None


def test_position_scores_and_unit_sums():
    ref = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), -1)
    other = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0], [3.0, 0.0, 0.0]]), -1)
    scores = position_scores(ref, other, torch.tensor([0, 1]))
    assert scores["kl"][0] == pytest.approx(0.0, abs=1e-7) and scores["kl"][1] > 0.1
    assert scores["agree"].tolist() == [1.0, 0.0] and scores["correct"].tolist() == [1.0, 0.0]
    sums = unit_sums(scores, ["u", "u"])
    assert sums["u"]["n"] == 2 and sums["u"]["correct"] == 1.0
    assert sums["u"]["logp"] == pytest.approx(float(other[0, 0] + other[1, 1]))


def test_selection_coverage():
    indices = torch.tensor([[10, 20], [11, 21], [12, 10]], dtype=torch.int32)  # [k=3, Hkv=2]
    selections = [(0, 5, 30, indices), (0, 30, 60, indices + 25)]
    # source [10, 12): head 0 passes both tokens, head 1 one of them -> 0.75; [40, 41) is not passed
    assert selection_coverage(selections, [(10, 12)]) == pytest.approx(0.75)
    assert selection_coverage(selections, [(10, 12), (40, 41)]) == pytest.approx((1 + 0.5 + 0 + 0) / 4)
    assert selection_coverage(selections, [(0, 3)]) is None  # in no selectable chunk (the anchor)
    assert math.isclose(selection_coverage([], [(10, 12)]) or 0.0, 0.0)


def test_too_short_background_is_refused():
    with pytest.raises(ValueError, match="too short"):
        build_case(CharProcessor(), "A short text.\n" * 100, "multikey", 6000, seed=0, max_background=10)


def test_case_fingerprint_follows_the_prompt_and_the_scored_positions():
    import dataclasses

    corpus, _ = natural_text()
    case = build_case(CharProcessor(), corpus, "vartrack", 3000, seed=2, max_background=50)
    again = build_case(CharProcessor(), corpus, "vartrack", 3000, seed=2, max_background=50)
    assert case.fingerprint == again.fingerprint  # a seed's case is reproducible
    assert dataclasses.replace(case, background=case.background[1:]).fingerprint != case.fingerprint
    assert build_case(CharProcessor(), corpus, "vartrack", 3000, seed=3, max_background=50).fingerprint != case.fingerprint
