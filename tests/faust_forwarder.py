"""A tiny Faust app for tests/test_localstack.py: forwards every event of one topic to another.

Run as its own worker process (as Relance's workers run):
    FORWARD_BROKER=127.0.0.1:9092 FORWARD_SOURCE=t-..-messages FORWARD_SINK=t-..-decisions \
    FORWARD_APP_ID=... FORWARD_DATA_DIR=/tmp/... \
    python tests/faust_forwarder.py worker --loglevel info --without-web
"""
from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["FORWARD_APP_ID"],
    broker=f"kafka://{os.environ['FORWARD_BROKER']}",
    datadir=os.environ["FORWARD_DATA_DIR"],
    store="memory://",
    web_enabled=False,
    topic_partitions=4,
    topic_replication_factor=1,
)
source = app.topic(os.environ["FORWARD_SOURCE"], key_type=bytes, value_serializer="json")
sink = app.topic(os.environ["FORWARD_SINK"], key_type=bytes, value_serializer="json")


@app.agent(source)
async def forward(stream):
    async for event in stream.events():
        await sink.send(key=event.key, value={**event.value, "forwarded_by": app.conf.id})


if __name__ == "__main__":
    app.main()  # Faust's own CLI reads the arguments (worker ...) from sys.argv
