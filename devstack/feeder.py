"""Send a replay file's records through Kafka, so a worker in event mode sees one stream.

Kafka orders records only within a partition, while ``relance replay`` reads one file in
one order with one clock (the largest ts so far). The feeder keeps the replay's meaning:

- control events travel on ``messages`` with the user's messages (their partition), at
  their place in the file; kill switches and ticks go to every partition;
- every record carries the file's clock at that point in the ``relance-clock`` header,
  so a partition's decisions happen at the same point of the file as in the replay;
- at the end, an empty record with the final clock reaches every partition, which makes
  the decisions due before it happen, as they did in the replay.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import orjson
from aiokafka import AIOKafkaProducer

from schemas.records import MessageEvent, clocked_records, control_to_dict
from streams.kafkaclient import PLAINTEXT, KafkaSecurity, start
from streams.topics import CLOCK_HEADER, MESSAGES, routes_on_messages, topic_name


@dataclass
class FeedSummary:
    sent: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    clock: int = -1


async def feed(lines: Iterable[bytes | str], bootstrap: str, prefix: str = "",
               security: KafkaSecurity = PLAINTEXT) -> FeedSummary:
    topic = topic_name(MESSAGES, prefix)
    summary = FeedSummary()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", **security.options())
    await start(producer, bootstrap, security)
    try:
        partitions = sorted(await producer.partitions_for(topic))
        for clock, record in clocked_records(lines, lambda number, reason: summary.errors.append((number, reason))):
            summary.clock = clock
            headers = [(CLOCK_HEADER, str(clock).encode())]
            if isinstance(record, MessageEvent):
                await producer.send(topic, record.to_json(), key=record.user_id.encode(), headers=headers)
            else:
                body = orjson.dumps(control_to_dict(record))
                for key, partition in routes_on_messages(record, len(partitions)):
                    await producer.send(topic, body, key=key, partition=partition, headers=headers)
            summary.sent += 1
        for partition in partitions:
            await producer.send(topic, b"", partition=partition, headers=[(CLOCK_HEADER, str(summary.clock).encode())])
        await producer.flush()
    finally:
        await producer.stop()
    return summary
