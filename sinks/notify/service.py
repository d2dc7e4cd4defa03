"""`spendstream notify`: the alerts topic wired to the dispatcher, the channels and the
delivery log. The dispatcher (dispatch.py) decides; this module moves records.

Sends run on a thread pool (``notify_workers``), so a slow receiver holds back only its
own channel; the consume loop stays responsive and heartbeats on time. Configured by a
``NotifyConfig`` (service_config.py) the caller builds from the settings, and the rules.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from prometheus_client.core import CounterMetricFamily, Metric

from spendstream.kafka_config import KafkaTarget
from spendstream.metrics import Lags, consumer_lags, lag_family, registry_of, start_health_server
from spendstream.producer import producer_config
from spendstream.readback import read_topic
from spendstream.schemas.avro import codec, ensure_registry, framed_codec
from spendstream.streams.api import jsonable

from . import NotifyError
from .channels import Sender, SendResult, build_senders, redact
from .config import NotifyRules
from .dispatch import Delivery, Dispatcher
from .service_config import NotifyConfig

log = logging.getLogger("spendstream.notify")

#: alerts held (read, not all channels done) before the consumer pauses its partitions
MAX_PENDING = 2_000
#: a commit at most this often while alerts complete
COMMIT_INTERVAL_S = 0.5
#: finals in the delivery log: a replay does not send these (alert, channel) pairs again
SETTLED = frozenset({"delivered", "failed"})


class KafkaOutbox:
    """Delivery records to alert-deliveries, dead letters to alerts.dlq (keyed by alert
    id); ``flush`` waits until the broker has them all, or raises."""

    def __init__(self, kafka: KafkaTarget) -> None:
        t = kafka.topics
        self.topics = (t.alert_deliveries, t.alerts_dlq)
        self.producer = Producer(producer_config(kafka, **{"linger.ms": 20}))
        self.deliveries = framed_codec("AlertDelivery", t.alert_deliveries)
        self.dead = framed_codec("AlertDeadLetter", t.alerts_dlq)
        self.errors: list[str] = []

    def _acked(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.errors.append(err.str())

    def _produce(self, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, key=key.encode(), value=value, on_delivery=self._acked)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.producer.poll(0)

    def delivery(self, record: dict[str, Any]) -> None:
        self._produce(self.topics[0], record["alert_id"], self.deliveries.encode(record))

    def dead_letter(self, record: dict[str, Any]) -> None:
        self._produce(self.topics[1], record["alert_id"], self.dead.encode(record))

    def flush(self, timeout: float = 60) -> None:
        left = self.producer.flush(timeout)
        if left or self.errors:
            reason = self.errors[0] if self.errors else f"{left} records not acknowledged"
            self.errors.clear()
            raise NotifyError(f"could not write the delivery log: {reason}")


def settled_pairs(kafka: KafkaTarget) -> set[tuple[str, str]]:
    """(alert id, channel) pairs the delivery log shows as delivered or given up."""
    decode = codec("AlertDelivery").decode
    records = read_topic(kafka, kafka.topics.alert_deliveries, decode)
    return {(r["alert_id"], r["channel"]) for _, r in records if r["outcome"] in SETTLED}


def alert_view(value: bytes) -> dict[str, Any] | None:
    """The alert as channels send it (JSON types, money as exact decimal strings);
    None when the record does not decode."""
    try:
        return dict(jsonable(codec("BudgetAlert").decode(value)))
    except Exception:  # any decoding failure: the record goes to the dead letters
        return None


class NotifyService:
    def __init__(
        self,
        config: NotifyConfig,
        rules: NotifyRules,
        *,
        senders: Mapping[str, Sender] | None = None,
    ) -> None:
        # the process's registry first: the outbox's codecs follow it
        ensure_registry(config.schema_registry_url or None)
        self.config = config
        self.rules = rules
        self.senders = dict(senders) if senders is not None else build_senders(rules)
        self.outbox = KafkaOutbox(config.kafka)
        self.secrets = rules.secret_values()
        self.stop_event = threading.Event()
        self.dispatcher: Dispatcher | None = None
        self._committed: dict[tuple[str, int], int] = {}
        #: partitions assigned now, and each one's lag as last sampled (metrics, readiness)
        self.assigned: set[tuple[str, int]] = set()
        self.lags: Lags = {}

    # --- metrics and readiness (README, "Metrics and health") ------------------------------
    def families(self) -> list[Metric]:
        """The dispatcher's counters as metric families (read, never changed here)."""
        stats = dict(self.dispatcher.stats) if self.dispatcher is not None else {}
        deliveries = CounterMetricFamily(
            "spendstream_notify_deliveries", "(alert, channel) deliveries by outcome; "
            "retried counts attempts that will be retried.", labels=["outcome"])  # fmt: skip
        for outcome in ("delivered", "retried", "failed", "skipped", "unrouted"):
            deliveries.add_metric([outcome], float(stats.get(outcome, 0)))
        return [
            CounterMetricFamily("spendstream_notify_alerts", "Alerts read from the alerts topic.",
                                value=float(stats.get("alerts", 0))),
            deliveries,
            CounterMetricFamily("spendstream_notify_digests", "Digest messages assembled.",
                                value=float(stats.get("digests", 0))),
            lag_family([(self.config.group, dict(self.lags))]),
        ]  # fmt: skip

    def not_ready(self) -> list[str]:
        """Ready: the delivery log was read at start and the alerts topic is assigned."""
        reasons = []
        if self.dispatcher is None:
            reasons.append("delivery log not read yet")
        if not self.assigned:
            reasons.append("no alerts partitions assigned")
        return reasons

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def _send(self, d: Delivery) -> SendResult:
        start = time.perf_counter()
        try:
            return self.senders[d.channel].send([p.view for p in d.alerts], d.key)
        except Exception as exc:  # a sender bug must not stop delivery to other channels
            why = redact(f"{type(exc).__name__}: {exc}", self.secrets)
            log.error("channel %s failed unexpectedly: %s", d.channel, why)
            return SendResult(ok=False, final=False, status=None, retry_after_s=None,
                              error=f"unexpected {type(exc).__name__}",
                              latency_ms=(time.perf_counter() - start) * 1000)  # fmt: skip

    def commit(self, consumer: Consumer, dispatcher: Dispatcher) -> None:
        """Make delivered alerts' offsets durable. Steps, and what a crash right after each
        one causes:

        1. Take the committable positions from the dispatcher (every alert before them has
           each channel delivered or given up). Crash: nothing written; on restart the
           alerts since the last commit are read again, the delivery log read at start
           skips the (alert, channel) pairs it shows as settled, the rest are sent again
           (at least once; receivers dedupe on the idempotency key).
        2. Flush the outbox: the delivery records and dead letters of those alerts are on
           the broker. Crash: as after 1, and now every pair of these alerts is settled in
           the log, so none is sent again.
        3. Commit the positions. Crash: nothing to redo.
        """
        positions = {tp: o for tp, o in dispatcher.committable().items()
                     if self._committed.get(tp) != o}  # fmt: skip
        self.outbox.flush()
        if positions:
            consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in positions.items()],
                asynchronous=False,
            )
            self._committed.update(positions)

    def run(self, *, idle_exit_s: float | None = None) -> dict[str, int]:
        c = self.config
        server = start_health_server(registry_of(self.families), self.not_ready,
                                     c.metrics_port, c.metrics_bind, "notify")  # fmt: skip
        try:
            return self._run(idle_exit_s)
        finally:
            server.stop()

    def _run(self, idle_exit_s: float | None) -> dict[str, int]:
        c = self.config
        settled = settled_pairs(c.kafka)
        log.info("delivery log: %d (alert, channel) pairs already settled", len(settled))
        dispatcher = Dispatcher(self.rules, self.outbox, done_before=settled,
                                now=time.monotonic, wall_us=lambda: time.time_ns() // 1000)  # fmt: skip
        self.dispatcher = dispatcher
        consumer = Consumer({
            "bootstrap.servers": c.kafka.bootstrap_servers,
            "group.id": c.group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            # a crashed notify's alerts move to another instance (or its restart) this soon
            "session.timeout.ms": c.session_timeout_s * 1000,
            "logger": logging.getLogger("spendstream.kafka"),
        })  # fmt: skip

        def on_revoke(c: Consumer, parts: list[TopicPartition]) -> None:
            try:
                self.commit(c, dispatcher)
            except Exception:  # the new owner re-sends what was not committed
                log.warning("commit at revocation failed", exc_info=True)
            dispatcher.forget((p.topic, p.partition) for p in parts)
            for p in parts:
                self._committed.pop((p.topic, p.partition), None)
                self.assigned.discard((p.topic, p.partition))

        def on_assign(c: Consumer, parts: list[TopicPartition]) -> None:
            self.assigned.update((p.topic, p.partition) for p in parts)

        topics = c.kafka.topics
        consumer.subscribe([topics.alerts], on_assign=on_assign, on_revoke=on_revoke)
        pool = ThreadPoolExecutor(c.workers, thread_name_prefix="notify-send")
        running: dict[Future[SendResult], Delivery] = {}
        paused = False
        last_commit = last_activity = lags_at = time.monotonic()
        log.info("notify: delivering %s to %d channels", topics.alerts, len(self.senders))
        try:
            while not self.stop_event.is_set():
                timeout = 0.02 if running else min(0.5, dispatcher.next_due_s())
                msgs = consumer.consume(500, timeout=timeout)
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if not err.retriable() and err.fatal():
                            raise NotifyError(f"Kafka: {err.str()}")
                        continue
                    value = msg.value() or b""
                    tp = (str(msg.topic()), int(msg.partition() or 0))
                    dispatcher.offer(tp, int(msg.offset() or 0), alert_view(value), value)
                for d in dispatcher.ready():
                    running[pool.submit(self._send, d)] = d
                if running:
                    done, _ = wait(list(running), timeout=0, return_when=FIRST_COMPLETED)
                    for fut in done:
                        dispatcher.finished(running.pop(fut), fut.result())
                now = time.monotonic()
                if msgs or running:
                    last_activity = now
                if now - last_commit >= COMMIT_INTERVAL_S:
                    self.commit(consumer, dispatcher)
                    last_commit = now
                if now - lags_at >= 1.0:
                    self.lags, lags_at = consumer_lags(consumer), now
                over = len(dispatcher.pending) >= MAX_PENDING
                if over != paused:
                    parts = consumer.assignment()
                    (consumer.pause if over else consumer.resume)(parts)
                    paused = over
                if (
                    idle_exit_s is not None
                    and dispatcher.idle
                    and now - last_activity > idle_exit_s
                ):
                    break
            # stopping: let running sends finish (bounded by their timeouts), record them
            for fut in list(running):
                dispatcher.finished(running.pop(fut), fut.result())
            self.commit(consumer, dispatcher)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            consumer.close()
            self.outbox.producer.flush(10)
        log.info("notify stopped: %s", dispatcher.stats)
        return dict(dispatcher.stats)
