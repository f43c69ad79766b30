"""The pipeline over encrypted, authenticated connections (issue 19), on the secure stack:
Kafka's SASL_SSL listener with a SCRAM user, Redis over TLS with an ACL user.

One end to end run: canonical messages fed over SASL_SSL, a worker running every stage
(engine, context, generator with the fake LLM, sender with the fake Graph API) whose Kafka
and Redis connections are all secure, and a follow-up that reaches the send API; a signed
webhook through the gateway lands on ``raw.whatsapp``. On that live worker: ``/explain``
refuses a request without the token and answers ``relance explain`` with it, and no label
of ``/metrics`` carries a user id or a message's text. Then the refusals: a wrong password,
no CA, and plaintext against the TLS listener, each one line naming the setting to fix.
"""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from devstack.fake_graph import FakeGraph, accounts_from_registry
from devstack.feeder import feed
from devstack.localstack import free_port
from devstack.processes import WorkerProcess
from domain.signature import SIGNATURE_HEADER, sign
from foundation.settings import Settings
from schemas.records import format_ts
from schemas.registry import BotRegistry
from streams.admin import create_topics
from streams.kafkaloop import read_partition
from streams.redisclient import redis_options
from streams.rediskeys import context_key
from streams.topics import CATALOG, DELIVERY_WHATSAPP, FOLLOWUP_OUTCOMES, RAW_BY_APP, topic_name
from tests.fake_llm import FakeLLM
from tests.gatewaykit import running_gateway
from tests.test_sender_kafka import registry_file
from waiting import async_wait_for

pytestmark = pytest.mark.kafka

RELANCE = str(Path(sys.executable).with_name("relance"))
START = 1_795_856_400_000  # 2026-11-28T09:00:00Z
MINUTE, HOUR = 60_000, 3_600_000
USER = "u-secure-417"
TEXTS = [f"secure question {i} about the Vertigo score" for i in range(5)]
EXPLAIN_TOKEN = "explain-token-of-the-secure-test"
APP_SECRET = "app-secret-of-the-secure-test"


def settings_env(settings: dict[str, str]) -> dict[str, str]:
    return {f"RELANCE_{name.upper()}": str(value) for name, value in settings.items()}


def client_settings(stack, **overrides) -> Settings:
    """Settings as a process of this stack loads them (secrets from their files)."""
    return Settings.load(env=settings_env({**stack.client_settings(), **overrides}))


def conversation() -> list[bytes]:
    lines = [orjson.dumps({"event_id": f"wamid.sec.{i}", "app": "whatsapp", "user_id": USER, "bot_id": "maestro",
                           "direction": "inbound", "ts": format_ts(START + i * MINUTE), "text": text})
             for i, text in enumerate(TEXTS)]
    return lines + [orjson.dumps({"type": "tick", "ts": format_ts(START + 13 * HOUR)})]


async def records_of(stack, topic: str, partitions: int) -> list:
    return [record for partition in range(partitions)
            async for batch in read_partition(stack.bootstrap, topic, partition, stack.kafka.security)
            for record in batch]


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_the_pipeline_runs_end_to_end_over_sasl_ssl_and_redis_tls(secure_stack, tmp_path):
    stack, prefix = secure_stack, "sec-e2e-"
    security = stack.kafka.security
    create_topics(stack.bootstrap, CATALOG, prefix, 4, security=security)
    bots = registry_file(tmp_path)  # maestro's WhatsApp number WA1 sends
    async with FakeLLM(mode="ok") as llm, FakeGraph(accounts_from_registry(BotRegistry.load(bots))) as graph:
        worker = WorkerProcess(
            tmp_path, ["engine", "context", "generator", "sender"], **stack.client_settings(),
            topic_prefix=prefix, partitions=4, data_dir=tmp_path / "data", registry=bots, clock="event",
            quiet_hours="off", llm_base_url=llm.base_url, llm_model="fake", graph_base_url=graph.base_url,
            explain_token=EXPLAIN_TOKEN).start()
        try:
            assert (await feed(conversation(), stack.bootstrap, prefix, security)).errors == []

            async def sent() -> list[dict]:
                worker.check_alive()
                outcomes = [orjson.loads(r.value) for r in await records_of(stack, topic_name(FOLLOWUP_OUTCOMES, prefix), 4)]
                return [o for o in outcomes if o["outcome"] == "sent"]
            [outcome] = await async_wait_for(sent, 90, "the follow-up sent over the secure stack")
            assert graph.accepted[outcome["followup_id"]] == 1 and outcome["user_id"] == USER
            [delivery] = await records_of(stack, topic_name(DELIVERY_WHATSAPP, prefix), 4)
            assert orjson.loads(delivery.value)["followup_id"] == outcome["followup_id"]
            assert "Vertigo" in orjson.dumps(llm.last_body).decode()  # the context came back from Redis over TLS

            redis = aioredis.Redis.from_url(stack.redis_url, **redis_options(client_settings(stack)))
            try:
                assert [key async for key in redis.scan_iter(match=f"*{USER}*")]
                # The conversation's text lives in Redis only for the window W (README, Least data).
                assert 0 < await redis.pttl(context_key(USER, "maestro")) <= Settings().window
            finally:
                await redis.aclose()

            web = f"http://127.0.0.1:{worker.web_port}"
            assert_explain_needs_the_token(web)
            assert_no_label_names_a_user_or_a_text(web)
            told = subprocess.run([RELANCE, "explain", USER, "maestro", "--worker", web, "--topic-prefix", prefix],
                                  capture_output=True, text=True, timeout=60,
                                  env={**os.environ, **settings_env(stack.client_settings()),
                                       "RELANCE_EXPLAIN_TOKEN": EXPLAIN_TOKEN})
            assert told.returncode == 0, told.stderr
            assert f"pair {USER} / maestro" in told.stdout
            assert f"follow-up {outcome['followup_id']}" in told.stdout, told.stdout  # read back over SASL_SSL
        finally:
            worker.stop()
        assert "Traceback" not in worker.log_tail(3000), worker.log_tail(80)


def assert_explain_needs_the_token(web: str) -> None:
    url = f"{web}/explain?user={USER}&bot=maestro"
    assert get(url)[0] == 401
    assert get(url, "not-the-token")[0] == 401
    assert get(url, EXPLAIN_TOKEN[:-1])[0] == 401
    status, body = get(url, EXPLAIN_TOKEN)
    assert status == 200 and orjson.loads(body)["user_id"] == USER
    assert get(f"{web}/metrics")[0] == 200 and get(f"{web}/health/live")[0] == 200  # open, as they must be


def assert_no_label_names_a_user_or_a_text(web: str) -> None:
    status, body = get(f"{web}/metrics")
    labels = {value for family in text_string_to_metric_families(body.decode())
              for sample in family.samples for value in sample.labels.values()}
    assert labels  # the page has labelled samples to judge
    secrets_of_people = [USER, *TEXTS, *(word for text in TEXTS for word in text.split() if len(word) > 6)]
    leaked = [(label, secret) for label in labels for secret in secrets_of_people if secret in label]
    assert leaked == []


async def test_the_gateway_writes_to_kafka_over_sasl_ssl(secure_stack):
    stack, prefix = secure_stack, "sec-gw-"
    create_topics(stack.bootstrap, RAW_BY_APP.values(), prefix, 1, security=stack.kafka.security)
    settings = client_settings(stack, topic_prefix=prefix, app_secret=APP_SECRET,
                               gateway_port=str(free_port()), web_port=str(free_port()))
    body = orjson.dumps({"object": "whatsapp_business_account", "entry": []})
    async with running_gateway(settings), aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{settings.gateway_port}/webhooks/whatsapp", data=body,
                                headers={SIGNATURE_HEADER: sign(body, APP_SECRET)}) as response:
            assert response.status == 200
    [record] = await records_of(stack, topic_name(RAW_BY_APP["whatsapp"], prefix), 1)
    assert record.value == body


# -- refusals: one line, naming the setting to fix ----------------------------------------------

def topics_create(stack, **overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELANCE_")}
    env.update(settings_env({**stack.client_settings(), "topic_prefix": "sec-refused-", **overrides}))
    return subprocess.run([RELANCE, "topics", "create"], capture_output=True, text=True, timeout=60, env=env)


def refusal_line(result: subprocess.CompletedProcess) -> str:
    """The command's own last word: one line (aiokafka may have logged its own before it)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("relance: "), result.stderr
    return line


def test_a_wrong_password_is_refused_by_name(secure_stack, tmp_path):
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    line = refusal_line(topics_create(secure_stack, kafka_password_file=str(wrong)))
    assert "refused" in line and "kafka_password" in line and "not-the-password" not in line


def test_no_ca_is_refused_by_name(secure_stack):
    line = refusal_line(topics_create(secure_stack, kafka_ca_file=""))
    assert "not trusted" in line and "kafka_ca_file" in line


def test_plaintext_against_the_tls_listener_is_refused_by_name(secure_stack):
    line = refusal_line(topics_create(secure_stack, kafka_security_protocol="PLAINTEXT", kafka_ca_file="",
                                      kafka_username="", kafka_password_file=""))
    assert "kafka_security_protocol" in line and "SASL_SSL" in line


def test_a_missing_ca_file_is_refused_before_connecting(secure_stack, tmp_path):
    line = refusal_line(topics_create(secure_stack, kafka_ca_file=str(tmp_path / "absent.pem")))
    assert "kafka_ca_file" in line and "absent.pem" in line


async def test_redis_refuses_a_wrong_password_and_plaintext(secure_stack, tmp_path):
    import redis

    good = client_settings(secure_stack)
    wrong = aioredis.Redis.from_url(secure_stack.redis_url, **{**redis_options(good), "password": "nope"})
    plain = aioredis.Redis.from_url(secure_stack.redis_url.replace("rediss://", "redis://"), socket_timeout=5,
                                    username=good.redis_username, password=good.redis_password)
    try:
        with pytest.raises(redis.AuthenticationError):
            await wrong.ping()
        with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
            await plain.ping()
    finally:
        await wrong.aclose()
        await plain.aclose()
