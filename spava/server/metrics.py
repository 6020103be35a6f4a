"""Prometheus metrics of the HTTP server, served at `GET /metrics` (text exposition format).

One registry per app (no global state). Names and units:
  spava_server_requests_total{outcome}          chat completions by outcome: ok, or the failure kind
                                                 (bad_input, overloaded, unhealthy, timeout, cancelled,
                                                 worker_died, internal, not_found, unauthorized...)
  spava_time_to_first_token_seconds             arrival of the HTTP request -> first text delta
  spava_e2e_request_latency_seconds             arrival -> answer complete (successful requests)
  spava_time_per_output_token_seconds           (e2e - ttft) / (completion tokens - 1), requests of >= 2 tokens
  spava_request_queue_time_seconds              seconds a request waited in the pipeline's queues
  spava_request_stage_seconds{stage}            the pipeline's per-stage seconds (RunResult.timings)
  spava_prompt_tokens_total, spava_generation_tokens_total, spava_visual_tokens_total
  spava_num_requests_running                    requests this server is answering now
  spava_num_requests_waiting{stage}             requests queued in the pipeline per stage (at scrape time)
  spava_pipeline_num_requests                   requests the pipeline holds, from every client (at scrape time)
  spava_healthy                                 1 while the pipeline accepts requests (at scrape time)
"""

from __future__ import annotations

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)


class ServerMetrics:
    """Counters and histograms of one server; `render(status)` returns the exposition text."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter("spava_server_requests", "Chat completion requests by outcome", ["outcome"],
                                registry=registry)
        self.ttft = Histogram("spava_time_to_first_token_seconds", "Seconds from request arrival to the first "
                              "text delta", buckets=_LATENCY_BUCKETS, registry=registry)
        self.e2e = Histogram("spava_e2e_request_latency_seconds", "Seconds from request arrival to the complete "
                             "answer", buckets=_LATENCY_BUCKETS, registry=registry)
        self.tpot = Histogram("spava_time_per_output_token_seconds", "Seconds per generated token after the first",
                              buckets=_TOKEN_BUCKETS, registry=registry)
        self.queue_time = Histogram("spava_request_queue_time_seconds", "Seconds a request waited in the "
                                    "pipeline's queues", buckets=_LATENCY_BUCKETS, registry=registry)
        self.stage_seconds = Histogram("spava_request_stage_seconds", "The pipeline's seconds per stage",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.prompt_tokens = Counter("spava_prompt_tokens", "Prompt tokens of answered requests", registry=registry)
        self.generation_tokens = Counter("spava_generation_tokens", "Generated tokens", registry=registry)
        self.visual_tokens = Counter("spava_visual_tokens", "Visual tokens of answered prompts", registry=registry)
        self.running = Gauge("spava_num_requests_running", "Requests this server is answering", registry=registry)
        self.waiting = Gauge("spava_num_requests_waiting", "Requests queued in the pipeline per stage", ["stage"],
                             registry=registry)
        self.pipeline_requests = Gauge("spava_pipeline_num_requests", "Requests the pipeline holds (every client)",
                                       registry=registry)
        self.healthy = Gauge("spava_healthy", "1 while the pipeline accepts requests", registry=registry)

    def finished(self, outcome: str) -> None:
        self.requests.labels(outcome=outcome).inc()

    def answered(self, result, submitted_at: float, first_delta_at: float | None, finished_at: float) -> None:
        """Record a successful request (perf_counter times)."""
        e2e = finished_at - submitted_at
        self.e2e.observe(e2e)
        num_tokens = len(result.token_ids)
        if first_delta_at is not None:
            self.ttft.observe(first_delta_at - submitted_at)
            if num_tokens >= 2:
                self.tpot.observe((finished_at - first_delta_at) / (num_tokens - 1))
        timings = result.timings
        self.queue_time.observe(sum(v for k, v in timings.items() if k.endswith("_queue_s")))
        for key, seconds in timings.items():
            if key.endswith("_s") and not key.endswith("_queue_s"):  # not counts such as encode_batch_size
                self.stage_seconds.labels(stage=key.removesuffix("_s")).observe(seconds)
        self.prompt_tokens.inc(result.num_prompt_tokens)
        self.generation_tokens.inc(num_tokens)
        self.visual_tokens.inc(result.num_visual_tokens)

    def render(self, status) -> bytes:
        """Exposition text; `status` is the pipeline's StatusOutput, or None when it did not answer."""
        from prometheus_client import generate_latest

        self.healthy.set(1 if status is not None and status.is_healthy else 0)
        if status is not None:
            self.pipeline_requests.set(status.num_inflight)
            for stage, count in status.num_queued.items():
                self.waiting.labels(stage=stage).set(count)
        return generate_latest(self.registry)
