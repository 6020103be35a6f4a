"""`spava bench-stream` end to end on CPU (tiny random Qwen2.5-VL), and its pure planning helpers."""

from __future__ import annotations

import json

import pytest

from spava.bench.stream import Layout, frame_schedule, main, parse_layout, parse_resolution, plan_runs, warmup_schedule

pytestmark = pytest.mark.slow  # starts spava processes (pipelines, CLI, servers)


def test_layout_names_and_run_plan():
    assert parse_layout("colocated4") == Layout("colocated4", 0, 4)
    assert parse_layout("disagg1+3").devices("cuda") == (["cuda:0"], ["cuda:1", "cuda:2", "cuda:3"])
    assert parse_layout("disagg2+2").devices("cpu") == (["cpu", "cpu"], ["cpu", "cpu"])
    for bad in ("colocated0", "disagg0+2", "disagg1+0", "mixed"):
        with pytest.raises(ValueError):
            parse_layout(bad)
    plan = plan_runs(["colocated4", "disagg1+3", "sequential"], None)
    assert [(layout.name, modes) for layout, modes in plan] == [
        ("colocated4", ["sequential", "stream"]), ("disagg1+3", ["stream"])]
    with pytest.raises(ValueError, match="sequential"):
        plan_runs(["disagg1+3", "sequential"], None)
    assert plan_runs(["sequential"], "colocated2")[0][1] == ["sequential"]


def test_request_schedules_and_resolutions():
    assert frame_schedule([64, 96, 128], 8) == [64, 96, 128, 64, 96, 128, 64, 96]
    assert warmup_schedule([64, 96, 128, 64], 2) == [128, 64]
    assert warmup_schedule([8], 2) == [8, 8]
    assert parse_resolution("720") == (720, 1280) and parse_resolution("96x64") == (64, 96)
    with pytest.raises(ValueError):
        parse_resolution("hd")


def test_stream_benchmark_on_cpu_colocated_and_disaggregated(tmp_path, capsys):
    out = tmp_path / "stream.json"
    code = main(["--device", "cpu", "--layouts", "colocated2", "sequential", "disagg1+1", "--num-requests", "3",
                 "--resolution", "64x48", "--frames", "4", "6", "--layout-workers", "1", "--max-prepared", "2",
                 "--warmup", "1", "--json", str(out)])
    assert code == 0, capsys.readouterr().out[-2000:]
    report = json.loads(out.read_text())
    runs = {(run["layout"], run["mode"]): run for run in report["runs"]}
    assert set(runs) == {("colocated2", "sequential"), ("colocated2", "stream"), ("disagg1+1", "stream")}
    for run in runs.values():
        assert run["num_ok"] == run["num_requests"] == 3 and not run["errors"]
        assert run["requests_per_s"] > 0 and 0 < run["ttft_median_s"] <= run["ttft_p90_s"]
        assert {"model_s", "layout_s", "video_s", "prefill_s"} <= set(run["stage_mean_s"])
        assert run["startup_s"] > 0 and run["speedup_vs_sequential"] > 0
    assert runs[("colocated2", "sequential")]["speedup_vs_sequential"] == pytest.approx(1.0)
    assert "encode_s" in runs[("disagg1+1", "stream")]["stage_mean_s"]
    assert runs[("colocated2", "stream")]["prompt_tokens_by_frames"].keys() == {"4", "6"}
    assert len(report["requests"]) == 9
    assert all(row["error"] is None and 0 < row["ttft_s"] <= row["latency_s"] for row in report["requests"])
    assert report["header"]["frame_counts"] == [4, 6, 4] and report["header"]["model_size"] == "tiny"
    assert report["target"]["best_disaggregated"] == "disagg1+1"
    assert "| disagg1+1 | stream |" in capsys.readouterr().out
