"""What the HTTP layer of `spava serve` adds to time to first token, and how it holds 32 streams.

Starts one pipeline with `spava launch` and one `spava serve --connect` in front of it, so that the
same scheduler and workers answer both paths:
  direct  `Pipeline.connect(address).stream(...)` from this process (ZMQ only)
  http    a streamed POST /v1/chat/completions to the server (HTTP + SSE, then the same ZMQ path)

Phase 1, added TTFT: the same requests one at a time, alternating direct / http, TTFT = submission
to the first text delta (http: to the first SSE chunk, which carries it); median and p99 of each and
the difference of medians. Phase 2, load: `--concurrency` streaming clients (32) send
`--num-requests` requests (200) in all; requests/s and p50/p99 TTFT, over HTTP and, for reference,
directly (one thread per stream).

    PYTHONPATH=$PWD:$PWD/kernels python examples/bench_server.py                 # CPU demo, text-only
    PYTHONPATH=$PWD:$PWD/kernels python examples/bench_server.py --video-frames 8 --json bench.json
    PYTHONPATH=$PWD:$PWD/kernels python examples/bench_server.py --config X.yaml model.path=/models/Qwen2.5-VL-7B
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from urllib.parse import urlsplit


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="pipeline YAML (default: the CPU demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--num-sequential", type=int, default=40, help="phase 1 requests per path (default 40)")
    parser.add_argument("--concurrency", type=int, default=32, help="phase 2 concurrent streams (default 32)")
    parser.add_argument("--num-requests", type=int, default=200, help="phase 2 requests in all (default 200)")
    parser.add_argument("--max-tokens", type=int, default=4, help="tokens per answer (default 4)")
    parser.add_argument("--video-frames", type=int, default=0, help="ask about a synthetic video of N frames "
                                                                    "(default 0: text-only questions)")
    parser.add_argument("--json", help="write the results here")
    return parser.parse_args(argv)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 40 samples is the largest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(fraction * len(ordered) + 0.999999) - 1))]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "median_ms": 1000 * statistics.median(values), "p99_ms": 1000 * percentile(values, 0.99)}


def start_process(command: list[str], pattern: str, timeout_s: float = 600) -> tuple[subprocess.Popen, str]:
    """Start `command`; return it and the first match of `pattern` in its output (group 1)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        line = process.stdout.readline()
        match = re.search(pattern, line)
        if match:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # keep draining
            return process, match.group(1)
    process.kill()
    raise RuntimeError(f"{command[3]} did not start (pattern {pattern!r})")


def stop_process(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=120)


class Requests:
    """The same question for both paths: (video path or None, prompt) -> direct call or HTTP body."""

    def __init__(self, video: str | None, max_tokens: int):
        self.video, self.max_tokens = video, max_tokens

    def prompt(self, index: int) -> str:
        return f"Question {index}: what happens next?"

    def body(self, index: int) -> dict:
        content = [{"type": "text", "text": self.prompt(index)}]
        if self.video:
            content.insert(0, {"type": "video_url", "video_url": {"url": f"file://{self.video}"}})
        return {"messages": [{"role": "user", "content": content}], "max_tokens": self.max_tokens, "stream": True}


def direct_ttft(pipeline, requests: Requests, index: int) -> float:
    start = time.perf_counter()
    ttft = None
    for _ in pipeline.stream(requests.video, requests.prompt(index), max_new_tokens=requests.max_tokens):
        ttft = ttft if ttft is not None else time.perf_counter() - start
    return ttft


async def http_ttft(url: str, body: dict) -> float:
    """One streamed POST over a plain asyncio socket (HTTP/1.1, Connection: close); seconds to the first
    SSE event. A minimal client on purpose: httpx's connection pool costs more CPU per request than
    the server itself, which on a 2-core box would be taken from the pipeline and counted as HTTP's."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head + payload)
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"{url} answered {status!r}: {await reader.read()!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        ttft, body_bytes = None, bytearray()
        while piece := await reader.read(65536):
            if ttft is None and b"data: " in piece:
                ttft = time.perf_counter() - start
            body_bytes += piece
    finally:
        writer.close()
    if b"data: [DONE]" not in body_bytes:
        raise RuntimeError(f"a stream from {url} ended without [DONE]")
    return ttft


async def http_load(url: str, requests: Requests, concurrency: int, num_requests: int) -> tuple[float, list[float]]:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(index):
        async with semaphore:
            return await http_ttft(url, requests.body(index))

    start = time.perf_counter()
    ttfts = await asyncio.gather(*(one(10_000 + i) for i in range(num_requests)))
    return time.perf_counter() - start, list(ttfts)


async def sequential(pipeline, url: str, requests: Requests, num_requests: int) -> tuple[list[float], list[float]]:
    """Alternating direct / http, one request at a time (the direct call runs in a thread; it times itself)."""
    for index in range(3):  # warm-up of both paths
        await asyncio.to_thread(direct_ttft, pipeline, requests, index)
        await http_ttft(url, requests.body(index))
    direct, http = [], []
    for index in range(100, 100 + num_requests):
        if index % 2 == 0:
            direct.append(await asyncio.to_thread(direct_ttft, pipeline, requests, index))
        http.append(await http_ttft(url, requests.body(index)))
        if index % 2 == 1:
            direct.append(await asyncio.to_thread(direct_ttft, pipeline, requests, index))
    return direct, http


def direct_load(pipeline, requests: Requests, concurrency: int, num_requests: int) -> tuple[float, list[float]]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(concurrency) as pool:
        start = time.perf_counter()
        ttfts = list(pool.map(lambda i: direct_ttft(pipeline, requests, 20_000 + i), range(num_requests)))
        return time.perf_counter() - start, ttfts


class CpuMeter:
    """CPU seconds used by process trees (needs psutil; empty without it): where a 2-core box's time goes."""

    def __init__(self, trees: dict[str, int], single: dict[str, int]):
        """`trees`: name -> pid counted with its children; `single`: name -> pid counted alone."""
        try:
            import psutil
        except ImportError:
            self.processes = {}
            return
        self.processes = {name: (psutil.Process(pid), name in trees) for name, pid in {**trees, **single}.items()}

    def _seconds(self) -> dict[str, float]:
        totals = {}
        for name, (process, is_tree) in self.processes.items():
            total = 0.0
            for member in [process, *(process.children(recursive=True) if is_tree else [])]:
                try:
                    times = member.cpu_times()
                    total += times.user + times.system
                except Exception:  # a process that just exited: its time is lost to the meter
                    continue
            totals[name] = total
        return totals

    def measure(self, work):
        """Run `work()`; returns (its result, CPU seconds per tree during it)."""
        before = self._seconds()
        value = work()
        after = self._seconds()
        return value, {name: after[name] - before[name] for name in after}


def run(args, address: str, base_url: str, video: str | None, pids: dict[str, int]) -> dict:
    from spava.config import load_config
    from spava.runtime.pipeline import Pipeline

    requests = Requests(video, args.max_tokens)
    url = f"{base_url}/chat/completions"
    results: dict = {"config": args.config or "demo", "overrides": args.overrides, "max_tokens": args.max_tokens,
                     "video_frames": args.video_frames, "cpu_count": os.cpu_count(), "load_avg": os.getloadavg()}
    with Pipeline.connect(address, load_config(args.config, list(args.overrides))) as pipeline:
        direct, http = asyncio.run(sequential(pipeline, url, requests, args.num_sequential))
        results["sequential"] = {"direct": summary(direct), "http": summary(http),
                                 "added_median_ms": 1000 * (statistics.median(http) - statistics.median(direct))}
        meter = CpuMeter(pids, {"client": os.getpid()})  # the client alone: the others are its children
        (wall, ttfts), cpu = meter.measure(lambda: asyncio.run(http_load(url, requests, args.concurrency,
                                                                          args.num_requests)))
        results["load_http"] = {"requests_per_s": args.num_requests / wall, "wall_s": wall, "ttft": summary(ttfts),
                                "cpu_s": cpu}
        (wall, ttfts), cpu = meter.measure(lambda: direct_load(pipeline, requests, args.concurrency, args.num_requests))
        results["load_direct"] = {"requests_per_s": args.num_requests / wall, "wall_s": wall, "ttft": summary(ttfts),
                                  "cpu_s": cpu}
    return results


def report(results: dict, concurrency: int, num_requests: int) -> str:
    sequential = results["sequential"]
    rows = [f"TTFT, one request at a time ({sequential['direct']['n']} per path, alternating):",
            f"  direct (Pipeline.stream)  median {sequential['direct']['median_ms']:8.2f} ms   "
            f"p99 {sequential['direct']['p99_ms']:8.2f} ms",
            f"  http (spava serve)        median {sequential['http']['median_ms']:8.2f} ms   "
            f"p99 {sequential['http']['p99_ms']:8.2f} ms",
            f"  added by HTTP (medians)   {sequential['added_median_ms']:8.2f} ms",
            f"{concurrency} concurrent streams, {num_requests} requests:"]
    for name in ("load_http", "load_direct"):
        load = results[name]
        rows.append(f"  {name[5:]:<6} {load['requests_per_s']:7.2f} req/s   TTFT p50 "
                    f"{load['ttft']['median_ms']:8.1f} ms   p99 {load['ttft']['p99_ms']:8.1f} ms")
        if load["cpu_s"]:
            rows.append("         CPU seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in load["cpu_s"].items()))
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    config_args = (["--config", args.config] if args.config else []) + list(args.overrides)
    with tempfile.TemporaryDirectory(prefix="spava-bench-serve-") as tmp:
        video = None
        if args.video_frames:
            from spava.media.synthetic import write_synthetic_video

            video = str(write_synthetic_video(os.path.join(tmp, "clip.mp4"), num_frames=args.video_frames,
                                              height=120, width=160, fps=8.0))
        launch, address = start_process([sys.executable, "-m", "spava.cli", "launch", *config_args,
                                         "runtime.log_level=WARNING"], r"serving on (tcp://\S+)")
        try:
            serve, base_url = start_process([sys.executable, "-m", "spava.cli", "serve", "--connect", address,
                                             "--port", "0", "--allowed-local-media-path", tmp, "--log-level",
                                             "warning", *config_args], r"ready at (http://\S+/v1)")
            try:
                results = run(args, address, base_url, video, {"pipeline": launch.pid, "server": serve.pid})
            finally:
                serve_exit_code = stop_process(serve)
        finally:
            stop_process(launch)
    results["serve_exit_code"] = serve_exit_code
    print(report(results, args.concurrency, args.num_requests))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
