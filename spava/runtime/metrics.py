"""Optional Prometheus metrics of the scheduler (`runtime.metrics_port`; needs prometheus_client).

Exposed at http://<host>:<port>/metrics: requests by outcome, per-stage latency histograms (queue
waits included, so time spent waiting is visible), queue depths and pipeline health.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("spava.metrics")
_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    """No-op unless a port is configured and prometheus_client is installed."""

    def __init__(self, port: int | None):
        self.is_enabled = False
        if port is None:
            return
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
        except ImportError:
            logger.warning("runtime.metrics_port is set but prometheus_client is missing: "
                           "pip install prometheus_client")
            return
        self.registry = CollectorRegistry()
        self.requests = Counter("spava_requests", "Finished requests by outcome", ["outcome", "stage"],
                                registry=self.registry)
        self.stage_seconds = Histogram("spava_stage_seconds", "Seconds per stage and queue", ["stage"],
                                       buckets=_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("spava_queue_depth", "Requests waiting per stage", ["stage"], registry=self.registry)
        self.healthy = Gauge("spava_healthy", "1 while the pipeline accepts requests", registry=self.registry)
        start_http_server(port, registry=self.registry)
        self.is_enabled = True

    def finished(self, outcome: str, stage: str, timings: dict[str, float]) -> None:
        if not self.is_enabled:
            return
        self.requests.labels(outcome=outcome, stage=stage).inc()
        for key, seconds in timings.items():
            if key.endswith("_s"):  # not counts such as encode_batch_size
                self.stage_seconds.labels(stage=key.removesuffix("_s")).observe(seconds)

    def update(self, queues: dict, is_healthy: bool) -> None:
        if not self.is_enabled:
            return
        for stage, queue in queues.items():
            self.queue_depth.labels(stage=stage).set(len(queue))
        self.healthy.set(1 if is_healthy else 0)
