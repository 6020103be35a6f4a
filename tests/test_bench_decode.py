"""`spava bench-decode` on the CPU with the tiny model: every variant runs and reports on one rank and
on two gloo ranks, a variant that needs another world size is refused, and the bytes a step must
read are counted from the model's own parameters."""

from __future__ import annotations

import json

import pytest

from spava.bench.decode import MULTI_RANK_VARIANTS, ONE_RANK_VARIANTS, bytes_per_step, main


def test_bench_decode_reports_every_variant(tmp_path):
    out = tmp_path / "decode.json"
    assert main(["--size", "tiny", "--device", "cpu", "--dtype", "float32", "--kv-tokens", "40", "--new-tokens", "6",
                 "--repeats", "1", "--warmup", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in results] == list(ONE_RANK_VARIANTS)
    for result in results:
        assert result["kv_tokens"] == 40 and result["tpot_s"] > 0 and len(result["first_steps_s"]) == 3
        assert result["bytes_per_step"] > 0


def test_bytes_per_step_counts_the_weights_and_the_kv_rows():
    from spava.bench.decode import _build

    class Args:
        model, size, dtype, world_size = "qwen2_5_vl", "tiny", "float32", 1

    _, modules = _build(Args, "cpu")
    layer_bytes = sum(p.numel() * 4 for p in modules.layers.parameters())
    head_bytes = modules.lm_head.weight.numel() * 4 + sum(p.numel() * 4 for p in modules.norm.parameters())
    kv_row = 2 * modules.num_kv_heads * modules.head_dim * 4 * len(modules.layers)
    assert bytes_per_step(modules, 0) == layer_bytes + head_bytes
    assert bytes_per_step(modules, 100) - bytes_per_step(modules, 0) == 100 * kv_row


@pytest.mark.slow  # spawns two ranks
def test_bench_decode_on_two_ranks(tmp_path):
    out = tmp_path / "decode.json"
    assert main(["--size", "tiny", "--device", "cpu", "--dtype", "float32", "--kv-tokens", "40", "--new-tokens", "6",
                 "--repeats", "1", "--warmup", "1", "--world-size", "2", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["config"]["world_size"] == 2
    assert [r["variant"] for r in data["results"]] == list(MULTI_RANK_VARIANTS)
    assert all(r["tpot_s"] > 0 for r in data["results"])


def test_variants_that_need_another_world_size_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--variants", "no-tp"])
    assert "no-tp: not measured with --world-size 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--world-size", "2", "--variants", "eager"])
    assert "eager: not measured with --world-size 2" in capsys.readouterr().err
