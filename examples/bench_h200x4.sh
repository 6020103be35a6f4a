#!/usr/bin/env bash
# The 4x H200 sweep of docs/benchmarks.md, into $OUT (default bench_out): GPU tests (attention
# backends, every method over NCCL, the Triton kernels), the kernel micro-benchmark, then the
# side-by-side TTFT benchmark of Qwen2.5-VL-7B: 360p / 720p / 1440p at 64 frames on W = 2 and 4 (all
# methods), and 1440p at 256 frames (spava). Recorded as benchmarks/h200_attention_kernels_<date>.json
# ($OUT/kernels.json), benchmarks/h200x4_7b_64f_w2w4_<date>.json ($OUT/b64/results.json) and
# benchmarks/h200x4_7b_1440p256f_spava_<date>.json ($OUT/b256/results.json).
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpus.txt"
timeout 150 python3 -m pytest tests/test_gpu.py tests/test_kernels.py -q -x -m gpu -k "torch_cuda or nccl or kernel or merge or pack or score" \
  -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
timeout 60 python3 examples/bench_kernels.py --json "$OUT/kernels.json" 2>&1 | tail -12
timeout 420 python3 -m spava.cli bench --size 7b --resolutions 1440 720 360 --frames 64 --world-sizes 4 2 \
  --methods spava apb zigzag_ring ulysses star full --encoder fast --repeats 3 --warmup 1 \
  --out "$OUT/b64" 2>&1 | grep -v -i -E "warn|USDT" | tail -40
timeout 120 python3 -m spava.cli bench --size 7b --resolutions 1440 --frames 256 --world-sizes 4 \
  --methods spava --encoder fast --repeats 1 --warmup 1 --out "$OUT/b256" 2>&1 | grep -v -i -E "warn|USDT" | tail -4
