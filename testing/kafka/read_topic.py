#!/usr/bin/env python3
"""Dumps every message of a Kafka topic as JSON lines, with an independent client
(kafka-python 3.0.12, its own protocol implementation): the evershard Kafka tests read what
the publisher sent with it and compare it with the journal.

    read_topic.py BOOTSTRAP TOPIC [TIMEOUT_SECONDS]

One line per message, partition by partition in offset order:
    {"partition": P, "offset": O, "key": "...", "headers": {"name": "value" | null}, "value": "..."}
then a last line {"end_offsets": {"P": N, ...}}. Exit 2 when the topic does not exist, 3 on a
timeout before the end offsets were reached.
"""
import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 60.0
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        client_id="evershard-read-topic",
        request_timeout_ms=30000,
    )
    deadline = time.monotonic() + timeout
    partitions = None
    while partitions is None and time.monotonic() < deadline:
        partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            time.sleep(0.1)
    if partitions is None:
        print(f"topic {topic} not found", file=sys.stderr)
        return 2
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    ends = consumer.end_offsets(tps)
    out = {tp.partition: [] for tp in tps}
    remaining = {tp for tp in tps if ends[tp] > 0}
    while remaining and time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=500, max_records=5000)
        for tp, records in batch.items():
            for r in records:
                if r.offset >= ends[tp]:
                    continue
                out[tp.partition].append(
                    {
                        "partition": r.partition,
                        "offset": r.offset,
                        "key": None if r.key is None else r.key.decode("utf-8"),
                        "headers": {
                            k: (None if v is None else v.decode("utf-8")) for k, v in r.headers
                        },
                        "value": None if r.value is None else r.value.decode("utf-8"),
                    }
                )
        for tp in list(remaining):
            if consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
    consumer.close()
    for p in sorted(out):
        for m in out[p]:
            print(json.dumps(m, separators=(",", ":")))
    print(json.dumps({"end_offsets": {str(tp.partition): ends[tp] for tp in tps}}))
    if remaining:
        print(f"timed out before the end offsets of {sorted(tp.partition for tp in remaining)}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
