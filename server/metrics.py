"""``GET /metrics``: Prometheus exposition of queues, dead letters and the workers' metrics.

Queue depth, pending jobs, consumers and dead letters are read from Redis at scrape time (they
are shared state, the same whichever process is asked). Worker processes started on this
machine write their counters and histograms in prometheus-client's multiprocess mode under
``data_dir/metrics`` (:func:`scoring.metrics.enable_multiprocess`); this endpoint adds them
up. A worker on another machine serves its own ``--metrics-port`` instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from scoring import keys
from scoring.metrics import QueueStats, queue_stats
from server.app import services


class QueueCollector(Collector):
    """Gauges from one snapshot of every pipeline's stream (``None``: Redis is down)."""

    def __init__(self, stats: Iterable[QueueStats] | None) -> None:
        self.stats = list(stats) if stats is not None else None

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("trailguard_redis_up", "Whether Redis answered this scrape.")
        up.add_metric([], 0.0 if self.stats is None else 1.0)
        yield up
        if self.stats is None:
            return
        families = {
            "depth": GaugeMetricFamily(
                "trailguard_queue_depth",
                "Jobs in the stream not yet finished.",
                labels=["pipeline"],
            ),
            "pending": GaugeMetricFamily(
                "trailguard_queue_pending",
                "Jobs delivered to a worker and not yet acknowledged.",
                labels=["pipeline"],
            ),
            "consumers": GaugeMetricFamily(
                "trailguard_queue_consumers",
                "Consumers in the pipeline's group.",
                labels=["pipeline"],
            ),
            "dead_letters": GaugeMetricFamily(
                "trailguard_dead_letter_depth",
                "Entries in the pipeline's dead-letter stream.",
                labels=["pipeline"],
            ),
        }
        for s in self.stats:
            for attr, family in families.items():
                family.add_metric([s.pipeline], float(getattr(s, attr)))
        yield from families.values()


async def metrics(request: Request) -> Response:
    svc = services(request)
    stats: list[QueueStats] | None
    try:
        stats = [await queue_stats(svc.redis, p) for p in keys.PIPELINES]
    except RedisError:
        stats = None
    registry = CollectorRegistry()
    registry.register(QueueCollector(stats))
    directory = svc.settings.data_dir / "metrics"
    if directory.is_dir():
        MultiProcessCollector(registry, path=str(directory))
    body = await run_in_threadpool(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def routes() -> list[BaseRoute]:
    return [Route("/metrics", metrics, methods=["GET"])]
