"""Prometheus metrics and health endpoints, shared by the worker, the sink and `spendstream
notify` (README, "Metrics and health").

Each process keeps the counters it always kept (the worker's ``Counter``, the price stage's
JSON file, ``SinkStats``, the dispatcher's ``stats``); a ``Collector`` turns them into
metric families when Prometheus scrapes, so nothing is counted twice. Each process builds
its own ``CollectorRegistry`` (never the global default), so a test can build several.

Histograms are observed once per batch, never per event (``Histogram``: fixed buckets,
JSON-serializable, so the price stage can hand its histograms to the faust process through
its metrics file). Consumer lag comes from values librdkafka already holds (the position
and the high watermark of the last fetch): no broker round trip per scrape.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

log = logging.getLogger("spendstream.metrics")

#: records per batch
SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000)
#: seconds per batch or insert
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)  # fmt: skip

#: (topic, partition) -> records behind the end of the partition
Lags = dict[tuple[str, int], int]
#: what keeps a process from being ready; empty: ready
NotReady = Callable[[], list[str]]


class Histogram:
    """Counts per bucket and a sum; not thread-safe (each owner observes on one thread).
    ``counts[i]`` holds the values ``<= bounds[i]`` not in an earlier bucket; the last
    holds the rest (+Inf)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def to_json(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.total}

    @classmethod
    def from_json(cls, bounds: Sequence[float], data: Any) -> Histogram:
        """The histogram ``to_json`` wrote; empty when ``data`` does not fit ``bounds``."""
        hist = cls(bounds)
        if isinstance(data, dict):
            counts = data.get("counts")
            if isinstance(counts, list) and len(counts) == len(hist.counts):
                hist.counts = [int(c) for c in counts]
                hist.total = float(data.get("sum") or 0.0)
        return hist

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative buckets as Prometheus writes them, ending in +Inf."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((floatToGoString(bound), float(running)))
        return out


def histogram_family(
    name: str, doc: str, label: str, histograms: Mapping[str, Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, hist in sorted(histograms.items()):
        family.add_metric([value], hist.buckets(), hist.total)
    return family


def lag_family(lags: Iterable[tuple[str, Lags]]) -> GaugeMetricFamily:
    """``spendstream_consumer_lag{group,topic,partition}`` from (group, lags) pairs."""
    family = GaugeMetricFamily(
        "spendstream_consumer_lag",
        "Records between a consumer group's position and the end of a partition it reads.",
        labels=["group", "topic", "partition"],
    )
    for group, by_tp in lags:
        for (topic, partition), lag in sorted(by_tp.items()):
            family.add_metric([group, topic, str(partition)], float(lag))
    return family


def consumer_lags(consumer: Any) -> Lags:
    """Lag of each partition assigned to a confluent-kafka consumer: the high watermark of
    its last fetch (``cached=True``: no broker round trip) minus its position (the offset
    after the last record handed to the application). Partitions without both yet are left
    out; any failure (a consumer closing) gives what was found so far."""
    lags: Lags = {}
    try:
        positions = consumer.position(consumer.assignment())
        for tp in positions:
            if tp.offset < 0:
                continue
            _low, high = consumer.get_watermark_offsets(tp, cached=True)
            if high is not None and high >= 0:
                lags[(tp.topic, tp.partition)] = max(int(high) - int(tp.offset), 0)
    except Exception as exc:  # metrics never stop a consumer loop
        log.debug("consumer lag unavailable: %s", exc)
    return lags


class FamiliesCollector(Collector):
    """Metric families computed by a function at scrape time."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return list(self.families())


def registry_of(families: Callable[[], Iterable[Metric]]) -> CollectorRegistry:
    """A registry of its own (not the process-wide default) holding ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamiliesCollector(families))
    return registry


def respond(
    path: str, registry: CollectorRegistry, not_ready: NotReady
) -> tuple[int, str, bytes] | None:
    """(status, content type, body) of ``GET path`` on a metrics port; None: not ours.

    ``/metrics``: Prometheus text format. ``/healthz``: the process answers (200).
    ``/readyz``: 200 when ready, else 503 with the reasons."""
    path = path.split("?", 1)[0]
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)
    if path == "/healthz":
        return 200, "application/json", b'{"ok": true}'
    if path == "/readyz":
        try:
            reasons = not_ready()
        except Exception as exc:  # a failing check is a reason, not a 500
            reasons = [f"readiness check failed: {type(exc).__name__}: {exc}"]
        if not reasons:
            return 200, "application/json", b'{"ready": true}'
        body = json.dumps({"ready": False, "reasons": reasons}).encode()
        return 503, "application/json", body
    return None


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on a thread of their own (the sink and
    `spendstream notify`; the worker serves them on its faust web server)."""

    def __init__(
        self, registry: CollectorRegistry, not_ready: NotReady, port: int, bind: str = "127.0.0.1"
    ) -> None:
        self.registry = registry
        self.not_ready = not_ready
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                try:
                    reply = respond(self.path, outer.registry, outer.not_ready)
                except Exception as exc:
                    log.warning("metrics scrape failed: %s", exc, exc_info=True)
                    reply = (500, "text/plain", f"scrape failed: {exc}\n".encode())
                status, ctype, body = reply or (404, "application/json", b'{"error": "not found"}')
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the log

        self.httpd = ThreadingHTTPServer((bind, port), Handler)
        self.httpd.daemon_threads = True
        self.bind = bind
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> HealthServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(5)
        self.httpd.server_close()


def start_health_server(
    registry: CollectorRegistry, not_ready: NotReady, port: int, bind: str, what: str
) -> HealthServer:
    """Start the server on ``port`` (0: any free one); a port in use is logged and a free
    one taken instead (as the sink's query port does): a busy metrics port must not stop
    the process that does the work."""
    try:
        server = HealthServer(registry, not_ready, port, bind)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise
        log.warning("%s metrics port %s in use; using a free one", what, port)
        server = HealthServer(registry, not_ready, 0, bind)
    server.start()
    log.info("%s serves /metrics, /healthz and /readyz on %s:%s", what, bind, server.port)
    return server
