"""The local development stack: a real Kafka and Redis without Docker, worker processes,
realistic traffic and the event-mode feeder, for the demo, the tests and the benchmarks."""
