"""`spava bench-decode` on the CPU with the tiny model: every variant runs and reports, and the bytes a
step must read are counted from the model's own parameters."""

from __future__ import annotations

import json

from spava.bench.decode import VARIANTS, bytes_per_step, main


def test_bench_decode_reports_every_variant(tmp_path):
    out = tmp_path / "decode.json"
    assert main(["--size", "tiny", "--device", "cpu", "--dtype", "float32", "--kv-tokens", "40", "--new-tokens", "6",
                 "--repeats", "1", "--warmup", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in results] == list(VARIANTS)
    for result in results:
        assert result["kv_tokens"] == 40 and result["tpot_s"] > 0 and len(result["first_steps_s"]) == 3
        assert result["bytes_per_step"] > 0


def test_bytes_per_step_counts_the_weights_and_the_kv_rows():
    from spava.bench.decode import _build

    class Args:
        model, size, dtype, device = "qwen2_5_vl", "tiny", "float32", "cpu"

    _, modules = _build(Args)
    layer_bytes = sum(p.numel() * 4 for p in modules.layers.parameters())
    head_bytes = modules.lm_head.weight.numel() * 4 + sum(p.numel() * 4 for p in modules.norm.parameters())
    kv_row = 2 * modules.num_kv_heads * modules.head_dim * 4 * len(modules.layers)
    assert bytes_per_step(modules, 0) == layer_bytes + head_bytes
    assert bytes_per_step(modules, 100) - bytes_per_step(modules, 0) == 100 * kv_row
