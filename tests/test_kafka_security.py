"""Every Kafka and Redis client connects as the settings say (issue 19).

The tree is read with ``ast``: every aiokafka client the project makes takes
``**<security>.options()``, every function that accepts a ``security`` is given one by
the project's own callers, and the Faust app gets its ``broker_credentials``. Tests and
benchmarks start their own plaintext stack, so they are left out. Then the options
themselves: TLS verified with host names checked, SASL as asked, secrets in no repr.
"""
from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest

from foundation.settings import SettingError, Settings
from streams.kafkaclient import KafkaSecurity
from streams.redisclient import redis_options

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ("foundation", "schemas", "domain", "streams", "agents", "devstack", "relance")
CLIENTS = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"}


def production_trees() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path)))
            for folder in PRODUCTION for path in sorted((ROOT / folder).rglob("*.py"))]


def called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def calls(tree: ast.Module):
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def test_every_kafka_client_takes_the_security_options():
    found, bare = 0, []
    for path, tree in production_trees():
        for call in calls(tree):
            if called_name(call) not in CLIENTS:
                continue
            found += 1
            spread = [k.value for k in call.keywords if k.arg is None]
            if not any(isinstance(n, ast.Call) and called_name(n) == "options" for v in spread for n in ast.walk(v)):
                bare.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert found >= 8  # the walk sees the clients (producers, consumers, admins)
    assert bare == [], f"Kafka clients made without **security.options(): {bare}"


def test_every_function_that_takes_a_security_is_given_one():
    """Those whose ``security`` has a default (PLAINTEXT, for the tests' own stack) could be
    called without one: the project's callers never do."""
    takes: dict[tuple[str, str], int] = {}  # (module, name) -> position of `security`, self dropped
    trees = production_trees()
    for path, tree in trees:
        for owner in ast.walk(tree):
            body = getattr(owner, "body", [])
            for node in body if isinstance(body, list) else []:
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                positional = [a.arg for a in node.args.args]
                optional = positional[len(positional) - len(node.args.defaults):] + [
                    a.arg for a, default in zip(node.args.kwonlyargs, node.args.kw_defaults) if default]
                if "security" in optional:
                    name = owner.name if node.name == "__init__" else node.name
                    position = positional.index("security") if "security" in positional else 99
                    takes[(module_of(path), name)] = position - (positional[:1] == ["self"])
    assert {name for _, name in takes} >= {"create_topics", "acreate_topics", "list_topics", "read_partition",
                                          "new_producer", "feed", "KafkaLoop", "RangeReader"}
    missing = []
    for path, tree in trees:
        origin = {alias.asname or alias.name: node.module for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) for alias in node.names}
        for call in calls(tree):
            if not isinstance(call.func, ast.Name):
                continue
            name = call.func.id
            key = (origin.get(name, module_of(path)), name)
            if key in takes and not (any(k.arg == "security" for k in call.keywords) or len(call.args) > takes[key]):
                missing.append(f"{path.relative_to(ROOT)}:{call.lineno} {name}")
    assert missing == [], f"called without the settings' security: {missing}"


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_the_faust_app_gets_the_broker_credentials():
    [app_call] = [call for _, tree in production_trees() for call in calls(tree)
                  if isinstance(call.func, ast.Attribute) and call.func.attr == "App"]
    assert "broker_credentials" in {k.arg for k in call_keywords(app_call)}


def call_keywords(call: ast.Call) -> list[ast.keyword]:
    return call.keywords


# -- the options -------------------------------------------------------------------------------

def secure(**settings) -> KafkaSecurity:
    return KafkaSecurity.of(Settings.from_mapping(settings))


def test_plaintext_is_the_default_and_adds_nothing():
    assert KafkaSecurity.of(Settings()).options() == {"security_protocol": "PLAINTEXT"}
    assert KafkaSecurity.of(Settings()).faust_credentials() is None


def test_sasl_ssl_verifies_the_certificate_and_the_host_name():
    options = secure(kafka_security_protocol="sasl_ssl", kafka_sasl_mechanism="scram-sha-256",
                     kafka_username="relance", kafka_password="s3cret").options()
    context = options.pop("ssl_context")
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert options == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                       "sasl_plain_username": "relance", "sasl_plain_password": "s3cret"}


async def test_oauthbearer_reads_the_token_file_each_time(tmp_path):
    token = tmp_path / "token"
    token.write_text("first\n")
    provider = secure(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="OAUTHBEARER",
                      kafka_oauth_token_file=str(token)).options()["sasl_oauth_token_provider"]
    assert await provider.token() == "first"
    token.write_text("renewed\n")
    assert await provider.token() == "renewed"


@pytest.mark.parametrize("settings, named", [
    ({"kafka_security_protocol": "SASL_SSL"}, "kafka_password"),
    ({"kafka_security_protocol": "SASL_SSL", "kafka_sasl_mechanism": "OAUTHBEARER"}, "kafka_oauth_token_file"),
    ({"kafka_security_protocol": "SSL", "kafka_ca_file": "/nowhere/ca.pem"}, "kafka_ca_file"),
    ({"kafka_security_protocol": "SSL", "kafka_cert_file": "/nowhere/c.pem"}, "kafka_key_file"),
    ({"kafka_ca_file": "/nowhere/ca.pem"}, "kafka_security_protocol"),
    ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
])
def test_settings_that_cannot_work_are_refused_by_name(settings, named):
    with pytest.raises(SettingError, match=named):
        secure(**settings)


def test_no_repr_shows_a_credential():
    settings = Settings.from_mapping({"kafka_security_protocol": "SASL_SSL", "kafka_username": "relance",
                                      "kafka_password": "pw-kafka-1", "redis_password": "pw-redis-2",
                                      "explain_token": "tok-3", "kafka_key_password": "pw-key-4"})
    shown = repr(settings) + repr(KafkaSecurity.of(settings)) + repr(KafkaSecurity.of(settings).faust_credentials())
    assert not any(secret in shown for secret in ("pw-kafka-1", "pw-redis-2", "tok-3", "pw-key-4"))


def test_redis_options_turn_tls_on_only_for_rediss(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    assert redis_options(Settings(redis_password="pw")) == {"password": "pw"}
    options = redis_options(Settings(redis_url="rediss://r:6380/0", redis_username="relance", redis_ca_file=str(ca)))
    assert options["ssl_cert_reqs"] == "required" and options["ssl_check_hostname"] is True
    assert options["ssl_ca_certs"] == str(ca) and options["username"] == "relance"
    with pytest.raises(SettingError, match="rediss://"):
        redis_options(Settings(redis_ca_file=str(ca)))
    with pytest.raises(SettingError, match="redis_ca_file"):
        redis_options(Settings(redis_url="rediss://r:6380/0", redis_ca_file=str(tmp_path / "absent.pem")))
