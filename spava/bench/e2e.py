"""`spava bench-e2e`: a user's time, from an encoded video FILE to the LAST token of the answer.

    spava bench-e2e --config configs/qwen2_5_vl_7b_1gpu.yaml --video match.mp4 --max-new-tokens 64 --out out/

For each file it serves the same request through the real pipeline (scheduler, workers, shared
memory, model ranks) `--warmup` times unmeasured, then `--repeats` times, and reports the medians of
what the user waits for and where it goes:

  ttft_s         submit -> first streamed token (client clock)
  tpot_s         mean time per output token after the first: first to last streamed token, over
                 the number of tokens after the first (client clock)
  total_s        submit -> the finished result (client clock)
  probe_s, video_decode_s            the video worker: probe + plan, decoding the frames
  frames_wait_s, transfer_s, preprocess_s, encode_s
                                     the model ranks: waiting for decoded frames, reading them to the
                                     device, resize/patchify/normalise there, the vision tower
  prefill_s                          the LLM layers over the prompt (GPU time, slowest rank)
  num_frames, num_prompt_tokens, peak_gpu_gb (GiB: torch.cuda.max_memory_allocated / 2**30)

Stages overlap (the vision tower starts while frames still decode), so they do not add up to ttft_s.
After the pipeline it measures, in the same run, the decoded-input time to first token of the same
grid with the same model, method and ranks (what `spava bench` measures: frames already decoded and
preprocessed on the device), and then what users do today on one GPU: HF transformers `generate`
with the Qwen preprocessing on the CPU, on the same file and frames, with the same number of new
tokens (`spava.bench.e2e_hf`). Without `--config` it runs the built-in CPU demo pipeline (tiny
random-weight model), so it runs anywhere; `--device cpu` moves any config to the CPU.
Writes results.json and stages.png (when matplotlib is installed) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from spava.bench.e2e_decoded import decoded_ttft
from spava.bench.e2e_report import format_table, write_chart
from spava.config import load_config

DEFAULT_PROMPT = "Describe what happens in this video in detail."
CLIENT_KEYS = ("ttft_s", "tpot_s", "total_s")
STAGE_KEYS = ("probe_s", "video_decode_s", "frames_wait_s", "transfer_s", "preprocess_s", "encode_s", "prefill_s",
              "decode_s")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="spava bench-e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="pipeline YAML (default: the built-in CPU demo)")
    parser.add_argument("--video", action="append", required=True, help="an encoded video file (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per answer (EOS ignored)")
    parser.add_argument("--repeats", type=int, default=3, help="measured requests per video")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured requests per video first")
    parser.add_argument("--hf-warmup", type=int, help="unmeasured HF requests per video (default: --warmup)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--device", choices=["cuda", "cpu"], help="cpu: run every model rank on the CPU")
    parser.add_argument("--no-hf", action="store_true", help="skip the HF transformers baseline")
    parser.add_argument("--no-decoded", action="store_true", help="skip the decoded-input TTFT measurement")
    parser.add_argument("--out", default="bench_e2e_out", help="output directory")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 2:
        parser.error("--max-new-tokens must be >= 2 (time per output token needs two tokens)")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    for path in args.video:
        if not os.path.isfile(path):
            parser.error(f"--video {path!r} is not a file")
    return args


def load_bench_config(args):
    """The pipeline config: YAML (or the demo) + overrides + what the benchmark needs."""
    overrides = list(args.overrides) + ["runtime.log_level=WARNING"]
    config = load_config(args.config, overrides)
    if args.device == "cpu":  # the same ranks, on the CPU
        cpus = lambda devices: "[" + ",".join("cpu" for _ in devices) + "]"  # noqa: E731
        overrides += [f"prefill.devices={cpus(config.prefill.devices)}",
                      f"encode.devices={cpus(config.encode.devices)}", "model.dtype=float32"]
        config = load_config(args.config, overrides)
    return config


def _timed_request(pipeline, video: str, args) -> dict:
    """One request, streamed: client-clock TTFT / TPOT / total plus the pipeline's stage timings."""
    start = time.perf_counter()
    handle = pipeline.submit(video, args.prompt, stream=True, max_new_tokens=args.max_new_tokens, ignore_eos=True)
    first = last = None
    for _ in handle.tokens():
        last = time.perf_counter()
        if first is None:
            first = last
    result = handle.result()
    end = time.perf_counter()
    num_tokens = len(result.token_ids)
    timings = result.timings
    row = {"ttft_s": first - start, "total_s": end - start,
           "tpot_s": (last - first) / max(num_tokens - 1, 1), "num_new_tokens": num_tokens,
           "num_frames": result.num_frames, "num_prompt_tokens": result.num_prompt_tokens,
           "num_visual_tokens": result.num_visual_tokens, "peak_gpu_gb": timings.get("peak_gpu_gb", 0.0),
           "method": result.method, "world_size": result.world_size, "warnings": result.warnings}
    row.update({key: timings.get(key, 0.0) for key in STAGE_KEYS})
    return row


def _median_row(rows: list[dict]) -> dict:
    summary = dict(rows[-1])
    for key, value in rows[-1].items():
        if isinstance(value, float):
            summary[key] = statistics.median(row[key] for row in rows)
    summary["repeats"] = [{key: row[key] for key in (*CLIENT_KEYS, "prefill_s", "encode_s")} for row in rows]
    return summary


def run_pipeline(config, args) -> dict:
    """Every video through the pipeline: {video: median row}."""
    from spava.runtime.pipeline import Pipeline

    results = {}
    with Pipeline.from_config(config, is_quiet=True) as pipeline:
        for video in args.video:
            for index in range(args.warmup):
                print(f"  {os.path.basename(video)}: warm-up {index + 1}/{args.warmup}", file=sys.stderr, flush=True)
                _timed_request(pipeline, video, args)
            rows = []
            for index in range(args.repeats):
                rows.append(_timed_request(pipeline, video, args))
                print(f"  {os.path.basename(video)}: repeat {index + 1}/{args.repeats}: ttft "
                      f"{rows[-1]['ttft_s']:.3f} s, total {rows[-1]['total_s']:.3f} s", file=sys.stderr, flush=True)
            results[video] = _median_row(rows)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    config = load_bench_config(args)
    os.makedirs(args.out, exist_ok=True)
    print(f"spava bench-e2e: {len(args.video)} video(s), {args.max_new_tokens} new tokens, {args.repeats} repeats "
          f"(+{args.warmup} warm-up), method {config.prefill.attention.method} on {len(config.prefill.devices)} "
          f"prefill rank(s) {config.prefill.devices}", file=sys.stderr, flush=True)
    results = {"config": _config_summary(config, args), "videos": {}}
    path = os.path.join(args.out, "results.json")
    for video, row in run_pipeline(config, args).items():
        results["videos"][video] = {"spava": row}
    _write(results, path)  # after every phase: a later one that fails or runs out of time loses nothing
    if not args.no_hf:
        from spava.bench.e2e_hf import hf_file_to_answer

        for video, entry in results["videos"].items():
            print(f"  {os.path.basename(video)}: HF transformers baseline", file=sys.stderr, flush=True)
            entry["hf"] = hf_file_to_answer(config, video, args)
            _write(results, path)
    if not args.no_decoded:
        for video, entry in results["videos"].items():
            print(f"  {os.path.basename(video)}: decoded-input TTFT", file=sys.stderr, flush=True)
            entry["decoded"] = decoded_ttft(config, video, args)
            _write(results, path)
    chart = os.path.join(args.out, "stages.png")
    has_chart = write_chart(results, chart)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(format_table(results))
        print(f"\nwrote {path}" + (f" and {chart}" if has_chart else ""))
    return 0


def _write(results: dict, path: str) -> None:
    with open(path, "w") as handle:
        json.dump(results, handle, indent=1)


def _config_summary(config, args) -> dict:
    import platform

    import torch

    device = "cpu"
    if torch.cuda.is_available() and any(d.startswith("cuda") for d in config.prefill.devices):
        device = torch.cuda.get_device_name()
    return {"model": config.model.path or f"{config.model.size} (random weights)", "dtype": config.model.dtype,
            "method": config.prefill.attention.method, "prefill_devices": list(config.prefill.devices),
            "encode_devices": list(config.encode.devices), "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats, "warmup": args.warmup, "device": device, "host": platform.node(),
            "compiled_ops": os.environ.get("SPAVA_COMPILE", "1") != "0",
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}


if __name__ == "__main__":
    sys.exit(main())
