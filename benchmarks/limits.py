"""The two limits the pipeline benchmark compares the job with, over the same topic.

    python benchmarks/limits.py raw   --bootstrap H:P --topic T --events N
    python benchmarks/limits.py faust --bootstrap H:P --topic T --events N

``raw``: confluent-kafka ``consume(num_messages=1000)`` + fastavro decode, nothing else:
the ceiling of any Python consumer of these records on this machine.
``faust``: a trivial faust agent (raw topic, ``stream.take(2000, within=0.02)``, fastavro
decode, count): the floor cost of faust's per-message path, i.e. the best a job that
reads every usage record through faust could do.

Each runs in a fresh process with its own consumer group, reads ``--events`` records from
the start of the topic, and prints JSON: events, seconds (first record to last), events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spendstream.schemas.avro import codec  # noqa: E402


def raw(bootstrap: str, topic: str, events: int) -> dict[str, float]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"limit-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})  # fmt: skip
    consumer.subscribe([topic])
    decode = codec("UsageEvent").decode
    seen, first = 0, None
    while seen < events:
        for msg in consumer.consume(num_messages=1000, timeout=0.5):
            if msg.error() is None:
                if first is None:
                    first = time.perf_counter()
                decode(msg.value())
                seen += 1
    done = time.perf_counter()
    consumer.close()
    assert first is not None
    return {"events": seen, "seconds": round(done - first, 3),
            "events_per_s": round(seen / (done - first))}  # fmt: skip


def floor(bootstrap: str, topic: str, events: int) -> dict[str, float]:
    import tempfile

    import faust
    from faust import Worker

    # faust makes <id>-data in the working directory unless told otherwise.
    app = faust.App(f"limit-{uuid.uuid4().hex[:8]}", broker=f"kafka://{bootstrap}",
                    datadir=tempfile.mkdtemp(prefix="spendstream-floor-"),
                    store="memory://", web_enabled=False, autodiscover=False,
                    consumer_auto_offset_reset="earliest", topic_allow_declare=True,
                    logging_config=None)  # fmt: skip
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    decode = codec("UsageEvent").decode
    state: dict[str, float] = {"seen": 0}

    @app.agent(source)
    async def count(stream: faust.StreamT) -> None:
        async for batch in stream.take(2000, within=0.02):
            if "first" not in state:
                state["first"] = time.perf_counter()
            for value in batch:
                decode(value)
            state["seen"] += len(batch)
            if state["seen"] >= events:
                state["done"] = time.perf_counter()
                print(json.dumps(result(state)), file=sys.__stdout__, flush=True)
                import os

                os._exit(0)

    sys.argv = [sys.argv[0]]
    Worker(
        app, loglevel=os.environ.get("LIMITS_LOGLEVEL", "error"), quiet=True
    ).execute_from_commandline()
    return result(state)


def result(state: dict[str, float]) -> dict[str, float]:
    seconds = state["done"] - state["first"]
    return {"events": int(state["seen"]), "seconds": round(seconds, 3),
            "events_per_s": round(state["seen"] / seconds)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["raw", "faust"])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    args = parser.parse_args()
    if args.kind == "raw":
        print(json.dumps(raw(args.bootstrap, args.topic, args.events)))
    else:
        floor(args.bootstrap, args.topic, args.events)


if __name__ == "__main__":
    main()
