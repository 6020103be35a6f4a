"""`spava bench-e2e` results -> a table (stdout) and a PNG of the stages (one bar per stage)."""

from __future__ import annotations

import os

STAGES = ("probe_s", "video_decode_s", "frames_wait_s", "transfer_s", "preprocess_s", "encode_s", "prefill_s",
          "decode_s")


def _ratio(numerator, denominator) -> str:
    if not numerator or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


def format_table(results: dict) -> str:
    config = results["config"]
    lines = [f"device: {config['device']} ({config['cpu_count']} CPU cores) | model {config['model']} "
             f"{config['dtype']} | {config['method']} on {len(config['prefill_devices'])} prefill rank(s) | "
             f"{config['max_new_tokens']} new tokens | median of {config['repeats']} (+{config['warmup']} warm-up) | "
             f"{config['date']}"]
    for video, entry in results["videos"].items():
        row, decoded, hf = entry["spava"], entry.get("decoded", {}), entry.get("hf", {})
        lines.append(f"\n{os.path.basename(video)}: {row['num_frames']} frames, {row['num_prompt_tokens']} prompt "
                     f"tokens ({row['num_visual_tokens']} visual), peak {row['peak_gpu_gb']:.1f} GiB")
        lines.append(f"  {'':<22} {'TTFT s':>9} {'TPOT ms':>9} {'total s':>9}")
        lines.append(f"  {'spava, from the file':<22} {row['ttft_s']:>9.3f} {row['tpot_s'] * 1e3:>9.2f} "
                     f"{row['total_s']:>9.3f}")
        if "ttft_s" in decoded:
            lines.append(f"  {'spava, decoded input':<22} {decoded['ttft_s']:>9.3f} {'':>9} {'':>9}   "
                         f"(file TTFT / decoded TTFT = {_ratio(row['ttft_s'], decoded['ttft_s'])}, "
                         f"+{row['ttft_s'] - decoded['ttft_s']:.3f} s)")
        elif decoded:
            lines.append(f"  {'spava, decoded input':<22} {decoded.get('skipped', 'not run')}")
        if "ttft_s" in hf:
            lines.append(f"  {'HF transformers':<22} {hf['ttft_s']:>9.3f} {hf['tpot_s'] * 1e3:>9.2f} "
                         f"{hf['total_s']:>9.3f}   (HF time / spava time: {_ratio(hf['total_s'], row['total_s'])} "
                         f"to the last token, {_ratio(hf['ttft_s'], row['ttft_s'])} to the first)")
        elif hf:
            lines.append(f"  {'HF transformers':<22} {hf.get('skipped', 'not run')}")
        stages = "  ".join(f"{key.removesuffix('_s')} {row.get(key, 0.0):.3f}" for key in STAGES)
        lines.append(f"  spava stages (s, overlapping): {stages}")
        if "video_decode_s" in hf:
            lines.append(f"  HF stages (s, in sequence): decode {hf['video_decode_s']:.3f}  preprocess "
                         f"{hf['preprocess_s']:.3f}  transfer {hf['transfer_s']:.3f}  to first token "
                         f"{hf['ttft_s']:.3f}")
        for warning in row.get("warnings", []):
            lines.append(f"  warning: {warning}")
    return "\n".join(lines)


def write_chart(results: dict, path: str) -> bool:
    """One panel per video: a bar per stage of spava (and of HF), plus TTFT and total."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    videos = list(results["videos"].items())
    figure, axes = plt.subplots(len(videos), 1, figsize=(9, 3.2 * len(videos)), squeeze=False)
    for axis, (video, entry) in zip(axes[:, 0], videos):
        row, hf = entry["spava"], entry.get("hf", {})
        labels = [key.removesuffix("_s") for key in STAGES] + ["TTFT", "total"]
        values = [row.get(key, 0.0) for key in STAGES] + [row["ttft_s"], row["total_s"]]
        positions = range(len(labels))
        axis.barh([p + 0.2 for p in positions], values, height=0.4, label="spava")
        if "ttft_s" in hf:
            hf_values = [0.0, hf["video_decode_s"], 0.0, hf["transfer_s"], hf["preprocess_s"], 0.0, 0.0, 0.0,
                         hf["ttft_s"], hf["total_s"]]
            axis.barh([p - 0.2 for p in positions], hf_values, height=0.4, label="HF transformers")
        axis.set_yticks(list(positions), labels)
        axis.invert_yaxis()
        axis.set(xlabel="seconds", title=f"{os.path.basename(video)}: {row['num_frames']} frames, "
                 f"{row['num_prompt_tokens']} tokens")
        axis.grid(axis="x", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True
