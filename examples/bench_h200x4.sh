#!/usr/bin/env bash
# The recorded GPU run of BENCHMARKS.md (nvidia-h200-x4): GPU tests, then the side-by-side TTFT
# benchmark of Qwen2.5-VL-7B at 1440p (64 frames, all methods; 256 frames, spava), into $OUT.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpus.txt"
timeout 100 python3 -m pytest tests/test_gpu.py -q -x -k "torch_cuda or nccl" -p no:cacheprovider 2>&1 \
  | tail -15 | tee "$OUT/gpu_tests.txt"
timeout 330 python3 -m spava.cli bench --size 7b --resolutions 1440 --frames 64 --world-sizes 4 \
  --methods spava zigzag_ring apb full hf ulysses star --encoder fast --repeats 3 --warmup 1 \
  --out "$OUT/b64" 2>&1 | grep -v -i warn | tail -30
timeout 150 python3 -m spava.cli bench --size 7b --resolutions 1440 --frames 256 --world-sizes 4 \
  --methods spava --encoder fast --repeats 1 --warmup 0 --out "$OUT/b256" 2>&1 | grep -v -i warn | tail -8
