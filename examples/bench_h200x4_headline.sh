#!/usr/bin/env bash
# The headline point of docs/benchmarks.md on 4x H200, into $OUT (default bench_out): every method
# side by side (HF transformers included) for Qwen2.5-VL-7B at 1440p / 64 frames on 4 GPUs, then the
# 3B model. Recorded as benchmarks/h200x4_7b_1440p64f_<date>.json ($OUT/b7/results.json) and
# benchmarks/h200x4_3b_1440p64f_<date>.json ($OUT/b3/results.json).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
timeout 90 python3 -m pytest tests/test_gpu.py -q -x -m gpu -k "nccl" -p no:cacheprovider 2>&1 | tail -3
timeout 340 python3 -m spava.cli bench --size 7b --resolutions 1440 --frames 64 --world-sizes 4 \
  --methods spava apb zigzag_ring ulysses star full hf --encoder fast --repeats 3 --warmup 1 \
  --out "$OUT/b7" 2>&1 | grep -v -i -E "warn|USDT|return func" | tail -12
timeout 170 python3 -m spava.cli bench --size 3b --resolutions 1440 --frames 64 --world-sizes 4 \
  --methods spava apb zigzag_ring full --encoder fast --repeats 3 --warmup 1 \
  --out "$OUT/b3" 2>&1 | grep -v -i -E "warn|USDT|return func" | tail -8
