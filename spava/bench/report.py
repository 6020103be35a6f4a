"""Benchmark results -> table (stdout), JSON, Markdown and a PNG plot of speedups."""

from __future__ import annotations

import json
from collections import defaultdict


def load_results(path: str) -> tuple[dict, list[dict]]:
    with open(path) as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    header = next((line for line in lines if "matmul_tflops" in line), {})
    return header, [line for line in lines if "method" in line]


def _baselines(entries: list[dict]) -> dict:
    """(case, size) -> seconds of `full` and of `hf`."""
    base: dict = defaultdict(dict)
    for entry in entries:
        if entry["method"] in ("full", "hf") and "seconds" in entry:
            base[(entry["case"], entry["size"])][entry["method"]] = entry["seconds"]
    return base


def format_table(header: dict, entries: list[dict]) -> str:
    base = _baselines(entries)
    lines = [f"device: {header.get('device')} | torch {header.get('torch')} | measured bf16 matmul "
             f"{header.get('matmul_tflops', 0):.0f} TFLOP/s per GPU",
             f"{'model':<5} {'case':<13} {'tokens':>7} {'method':<12} {'W':>2} {'TTFT s':>8} {'ViT s':>7} "
             f"{'vs full':>8} {'vs HF':>7} {'peak GiB':>8} {'TFLOP/s':>8} {'roofline':>8}"]
    for entry in entries:
        prefix = (f"{entry['size']:<5} {entry['case']:<13} {entry['num_tokens']:>7} {entry['method']:<12} "
                  f"{entry['world_size']:>2}")
        if "seconds" not in entry:
            lines.append(f"{prefix} {entry.get('skipped', 'not run')}")
            continue
        ref = base[(entry["case"], entry["size"])]
        vs_full = f"{ref['full'] / entry['seconds']:.2f}x" if "full" in ref else "-"
        vs_hf = f"{ref['hf'] / entry['seconds']:.2f}x" if "hf" in ref else "-"
        lines.append(f"{prefix} {entry['seconds']:>8.3f} {entry['vit_seconds']:>7.3f} {vs_full:>8} {vs_hf:>7} "
                     f"{entry['peak_gb']:>8.1f} {entry['tflops_per_gpu']:>8.0f} {entry['roofline'] * 100:>7.0f}%")
    return "\n".join(lines)


def write_plot(entries: list[dict], path: str) -> bool:
    """Speedup over `full` vs frames, one line per method and world size, one panel per resolution."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    base = _baselines(entries)
    resolutions = sorted({e["resolution"] for e in entries})
    figure, axes = plt.subplots(1, len(resolutions), figsize=(5 * len(resolutions), 4), squeeze=False)
    for axis, resolution in zip(axes[0], resolutions):
        series: dict = defaultdict(list)
        for entry in entries:
            full = base[(entry["case"], entry["size"])].get("full")
            if entry["resolution"] == resolution and "seconds" in entry and full and entry["method"] != "full":
                series[f"{entry['size']} {entry['method']} W={entry['world_size']}"].append(
                    (entry["frames"], full / entry["seconds"]))
        for label, points in sorted(series.items()):
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        axis.set(title=f"{resolution}p", xlabel="frames", ylabel="speedup over full (1 GPU)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True
