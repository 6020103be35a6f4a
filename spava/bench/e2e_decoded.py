"""The decoded-input time to first token of a file's grid: what `spava bench` measures, for bench-e2e.

Frames already decoded and preprocessed, pixel rows already on the device: the vision tower, the
prefill and the first token only, with the pipeline's model, attention method and number of prefill
ranks (colocated), timed by the `spava bench` harness (synchronised, warm-up excluded, median).
"""

from __future__ import annotations

import os
import tempfile

from spava.bench.e2e_inputs import plan_video
from spava.bench.report import load_results
from spava.models.family import family_name
from spava.runtime.launch import free_port


def decoded_ttft(config, video: str, args) -> dict:
    """{"ttft_s", "vit_s", "peak_gb", "grid", "method", "world_size"} of `video`'s grid."""
    import torch.multiprocessing as mp

    from spava.bench.harness import BenchSpec
    from spava.bench.inputs import GridCase
    from spava.bench.worker import bench_rank

    plan = plan_video(config, video)
    world_size = len(config.prefill.devices)
    attention = config.prefill.attention
    method = attention.method if world_size > 1 else "full"
    device = "cuda" if any(d.startswith("cuda") for d in config.prefill.devices) else "cpu"
    spec = BenchSpec(model=family_name(config.model), size=config.model.size, model_path=config.model.path,
                     cases=[GridCase(plan.grid_thw, "file")],
                     methods=[method], world_sizes=[world_size], repeats=args.repeats, warmup=max(1, args.warmup),
                     device=device, dtype=config.model.dtype, backend=attention.backend,
                     encoder=config.model.vision_impl, attention=attention if world_size > 1 else None)
    with tempfile.TemporaryDirectory(prefix="spava-bench-") as directory:
        jsonl = os.path.join(directory, "results.jsonl")
        open(jsonl, "w").close()
        mp.start_processes(bench_rank, args=(world_size, spec, f"tcp://127.0.0.1:{free_port()}", jsonl),
                           nprocs=world_size, start_method="spawn")
        _, entries = load_results(jsonl)
    (entry,) = entries
    if "seconds" not in entry:
        return {"skipped": entry.get("skipped", "not run")}
    return {"ttft_s": entry["seconds"], "vit_s": entry["vit_seconds"], "peak_gb": entry["peak_gb"],
            "grid": list(plan.grid_thw), "num_tokens": entry["num_tokens"], "method": method,
            "world_size": world_size}
