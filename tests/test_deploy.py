"""The operations files: compose, Prometheus rules, Grafana, Kubernetes.

They are not code, so nothing else runs them: a typo in a label, a renamed metric or a
Service selector that matches no pod would only show up in production, as an alert that
never fires or an empty panel. These tests run the real validators offline
(docker-compose, promtool, kubernetes-validate) and cross-check the files against
foundation/metrics.py and foundation/settings.py.

The tools come from Debian packages: `apt-get install -y docker-compose prometheus`.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from devstack.localstack import KAFKA_VERSION
from foundation.metrics import Metrics, new_metrics
from foundation.settings import ENV_PREFIX, Settings
from relance.app import ROLES as ALL_ROLES

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "relance.json"
K8S = DEPLOY / "k8s"
ROLES = ("ingest", "engine", "generator", "sender")  # the worker services / Deployments, by their first role
GATEWAY = "gateway"                        # the gateway's compose service, and its Deployment's command


def _roles_run(command: list[str]) -> set[str]:
    """The roles a ``relance worker --role A --role B`` command runs."""
    assert command[:2] == ["worker", "--role"]
    return {command[i + 1] for i, word in enumerate(command) if word == "--role"}
WEB_PORT = Settings().web_port
# Labels Prometheus adds at scrape time (prometheus.yml adds role): valid in any selector.
TARGET_LABELS = {"job", "instance", "role"}
# Kubernetes version the manifests are checked against: the oldest still maintained.
K8S_VERSION = "1.30"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: apt-get install -y {package}")
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


# -- the metric catalogue ------------------------------------------------------------------

def _catalogue() -> dict[str, set[str]]:
    """Every series name a worker exposes -> its label names (plus le for buckets)."""
    metrics = new_metrics()
    series: dict[str, set[str]] = {}
    for field in dataclasses.fields(Metrics):
        if field.name == "registry":
            continue
        collector = getattr(metrics, field.name)
        name, labels = collector._name, set(collector._labelnames)
        if collector._type == "counter":
            series[name + "_total"] = labels
        elif collector._type == "histogram":
            series[name + "_bucket"] = labels | {"le"}
            series[name + "_count"] = labels
            series[name + "_sum"] = labels
        else:
            series[name] = labels
    return series


_METRIC = re.compile(r"\b(relance_[a-zA-Z0-9_]+)")
_SELECTOR = re.compile(r"\b(relance_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")


def _check_expression(expr: str, where: str, catalogue: dict[str, set[str]]) -> list[str]:
    """Problems with the metric and label names of one PromQL expression."""
    problems = []
    names = set(_METRIC.findall(expr))
    for name in sorted(names - set(catalogue)):
        problems.append(f"{where}: {name} is not declared in foundation/metrics.py")
    known = set().union(*(catalogue.get(n, set()) for n in names)) if names else set()
    for name, matchers in _SELECTOR.findall(expr):
        for label_name in _MATCHER.findall(matchers):
            if label_name not in catalogue.get(name, set()) | TARGET_LABELS:
                problems.append(f"{where}: {name} has no label {label_name!r}")
    if names:
        # `sum by (app)` over a metric without app gives one unlabelled series: a legend
        # of blanks, or an alert whose labels say nothing.
        for group in _GROUPING.findall(expr):
            for label_name in filter(None, (part.strip() for part in group.split(","))):
                if label_name not in known | TARGET_LABELS:
                    problems.append(f"{where}: no metric in it has the label {label_name!r}")
    return problems


def _alert_rules() -> list[dict]:
    document = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def _dashboard_panels() -> list[dict]:
    panels = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))   # panels inside collapsed rows
    return panels


def test_catalogue_checker_catches_unknown_names_and_labels():
    # The checks below pass when they find nothing: prove that they can find something.
    catalogue = _catalogue()
    assert _check_expression('sum by (app) (rate(relance_events_in_total[5m]))', "ok", catalogue) == []
    assert _check_expression('rate(relance_event_in_total[5m])', "x", catalogue)
    assert _check_expression('relance_dead_letters_total{app="whatsapp"}', "x", catalogue)
    assert _check_expression('sum by (app) (rate(relance_dead_letters_total[5m]))', "x", catalogue)
    assert _check_expression('histogram_quantile(0.9, sum by (le) (rate(relance_timer_lag_seconds[5m])))', "x", catalogue)


# -- docker-compose ------------------------------------------------------------------------

def _compose() -> dict:
    tool = _tool("docker-compose", "docker-compose")
    result = _run(tool, "-f", "docker-compose.yml", "config")
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def test_compose_file_is_valid():
    tool = _tool("docker-compose", "docker-compose")
    result = _run(tool, "-f", "docker-compose.yml", "config", "-q")
    assert result.returncode == 0, f"docker-compose config -q failed:\n{result.stderr}"


def test_compose_runs_each_worker_role_against_the_compose_kafka_and_redis():
    services = _compose()["services"]
    # the same Kafka as `relance broker`, so a test that passes locally passes in compose
    assert services["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert services["redis"]["image"].startswith("redis:7")
    # The ledger's Redis keeps its data across restarts and never evicts a key (issue 14).
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--maxmemory-policy noeviction" in redis_command
    assert any(volume.split(":")[:2] == ["redis-data", "/data"] for volume in services["redis"]["volumes"])
    assert services["topics"]["command"] == ["topics", "create"]
    run: set[str] = set()
    for role in ROLES:
        service = services[role]
        assert service["command"][2] == role
        run |= _roles_run(service["command"])
        env = service["environment"]
        assert env["RELANCE_BROKER"] == "kafka:9092"
        assert env["RELANCE_REDIS_URL"] == "redis://redis:6379/0"
        assert env["RELANCE_REGISTRY"] == "/app/deploy/bots.toml"
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        # a worker must not start before the topics exist
        assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        health = " ".join(service["healthcheck"]["test"])
        assert "/health" in health and "RELANCE_WEB_PORT" in health
    # every stage of the pipeline runs somewhere (a missing one breaks it silently)
    assert run == set(ALL_ROLES)


def test_compose_environment_holds_only_real_settings_with_valid_values():
    # A misspelt RELANCE_ variable is silently ignored by the worker, which then runs on
    # a default (for example the local broker address) instead of the compose service.
    names = set(Settings.names())
    secret_files = {name + "_file" for name in Settings.secret_names()}
    for service_name, service in _compose()["services"].items():
        env = service.get("environment") or {}
        relance = {k[len(ENV_PREFIX):].lower(): v for k, v in env.items()
                   if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX):].lower() not in secret_files}
        unknown = sorted(set(relance) - names)
        assert not unknown, f"{service_name}: not settings: {unknown}"
        Settings.from_mapping(relance)   # raises SettingError on a value the worker rejects


def test_compose_mounts_files_that_exist():
    # Compose creates a missing bind-mount source as an empty folder: Prometheus or
    # Grafana would then start with no config and no error.
    services = _compose()["services"]
    targets = {}
    for service_name in ("prometheus", "grafana"):
        for volume in services[service_name]["volumes"]:
            # docker-compose v1 prints the short form SOURCE:TARGET[:MODE], v2 a mapping
            if isinstance(volume, str):
                source, target = volume.split(":")[:2]
            else:
                source, target = volume["source"], volume["target"]
            if source.startswith("/"):   # a bind mount; named volumes have no path
                assert Path(source).exists(), f"{service_name}: {source} does not exist"
            targets[target] = source
    assert Path(targets["/etc/prometheus"]) == PROMETHEUS
    assert Path(targets["/var/lib/grafana/dashboards"]) == DASHBOARD.parent
    assert Path(targets["/etc/grafana/provisioning"]) == DEPLOY / "grafana" / "provisioning"


def test_prometheus_scrapes_every_worker_by_its_compose_service_name_and_web_port():
    services = _compose()["services"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "relance")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    scraped = {}
    for static in job["static_configs"]:
        for target in static["targets"]:
            host, port = target.rsplit(":", 1)
            assert host in services, f"scrape target {target} is not a compose service"
            port_setting = services[host]["environment"].get("RELANCE_WEB_PORT", str(WEB_PORT))
            assert port == str(port_setting), f"{target}: the worker listens on {port_setting}"
            scraped[host] = static["labels"]["role"]
    assert scraped == {role: role for role in ROLES + (GATEWAY,)}


def test_compose_runs_the_gateway_with_its_secrets_from_the_environment_only():
    services = _compose()["services"]
    gateway = services[GATEWAY]
    assert gateway["command"] == ["gateway"]
    env = gateway["environment"]
    assert env["RELANCE_BROKER"] == "kafka:9092"
    port = env["RELANCE_GATEWAY_PORT"]
    assert any(str(p).split(":")[-1].split("/")[0] == port for p in gateway["ports"]), gateway["ports"]
    assert gateway["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    health = " ".join(gateway["healthcheck"]["test"])
    assert "/health" in health and "RELANCE_WEB_PORT" in health
    # The file itself names the variables and holds no value: secrets come from the shell or .env.
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][GATEWAY]["environment"]
    for name in ("RELANCE_APP_SECRET", "RELANCE_VERIFY_TOKEN"):
        assert raw[name] == "${%s:-}" % name



def test_compose_kafka_and_redis_ask_every_client_for_credentials_from_secret_files():
    services = _compose()["services"]
    kafka = services["kafka"]["environment"]
    protocols = dict(pair.split(":") for pair in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    listeners = {item.split("://")[0]: item.split("://")[1] for item in kafka["KAFKA_LISTENERS"].split(",")}
    for name, address in listeners.items():
        # Every listener another container or the host can reach asks for a login.
        assert protocols[name].startswith("SASL_") or address.startswith("127.0.0.1:"), name
    assert "SASL_PLAINTEXT" in protocols.values() and kafka["KAFKA_SASL_ENABLED_MECHANISMS"] == "PLAIN"
    jaas = kafka["KAFKA_OPTS"].split("java.security.auth.login.config=")[1]
    assert jaas == "/run/secrets/kafka_jaas.conf" and _secret_names(services["kafka"]) >= {"kafka_jaas.conf"}
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--aclfile") + 1] == "/run/secrets/redis_users.acl"
    assert _secret_names(services["redis"]) >= {"redis_users.acl"}
    clients = [name for name, service in services.items() if "RELANCE_BROKER" in (service.get("environment") or {})]
    assert set(clients) >= set(ROLES) | {GATEWAY, "topics"}
    for name in clients:
        env = services[name]["environment"]
        settings = Settings.from_mapping({k[len(ENV_PREFIX):].lower(): v for k, v in env.items()
                                          if k.startswith(ENV_PREFIX) and not k.endswith("_FILE")})
        assert settings.kafka_security_protocol.startswith("SASL_") and settings.kafka_username, name
        for variable in ("RELANCE_KAFKA_PASSWORD_FILE", "RELANCE_REDIS_PASSWORD_FILE"):
            path = env[variable]
            assert path.startswith("/run/secrets/") and path.rsplit("/", 1)[1] in _secret_names(services[name]), name
    # The secrets' files are made on the machine (deploy/secrets/make) and never committed.
    sources = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["secrets"]
    ignored = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert ignored[0] == "*" and all(source["file"].startswith("./deploy/secrets/") for source in sources.values())


def _secret_names(service: dict) -> set[str]:
    return {entry["source"] if isinstance(entry, dict) else entry for entry in service.get("secrets", [])}

# -- Prometheus ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "deploy/prometheus/prometheus.yml"),
        ("check", "rules", "deploy/prometheus/alerts.yml"),
        ("test", "rules", "deploy/prometheus/alerts_test.yml"),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(args):
    tool = _tool("promtool", "prometheus")
    result = _run(tool, *args)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"


REQUIRED_ALERTS = {
    "RelanceConsumerLagHigh", "RelanceDeadLetterRateHigh", "RelanceLLMErrorRatioHigh",
    "RelanceLLMCircuitOpen", "RelanceFollowupsSurge", "RelanceNoCommit", "RelanceTimerLagHigh",
}


def test_alerts_are_the_required_ones_with_severity_and_annotations():
    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert REQUIRED_ALERTS <= set(names)
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), rule["alert"]


def test_every_alert_has_a_firing_and_a_not_firing_unit_test():
    # promtool only runs the cases that exist: an alert with no case passes vacuously.
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    fires, stays_quiet = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else stays_quiet).add(check["alertname"])
    for rule in _alert_rules():
        assert rule["alert"] in fires, f"{rule['alert']} has no case where it fires"
        assert rule["alert"] in stays_quiet, f"{rule['alert']} has no case where it must not fire"


def test_alert_expressions_use_declared_metrics_and_labels():
    catalogue = _catalogue()
    problems = []
    for rule in _alert_rules():
        problems += _check_expression(rule["expr"], rule["alert"], catalogue)
    assert not problems, "\n".join(problems)


def test_alert_unit_tests_feed_declared_series():
    # A not-firing case fed a misspelt series passes for the wrong reason.
    catalogue = _catalogue()
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    problems = []
    for case in tests:
        for series in case.get("input_series", []):
            problems += _check_expression(series["series"], case["name"], catalogue)
    assert not problems, "\n".join(problems)


# -- Grafana -------------------------------------------------------------------------------

def test_dashboard_panels_query_declared_metrics_and_labels():
    catalogue = _catalogue()
    problems, exprs = [], 0
    for panel in _dashboard_panels():
        for target in panel.get("targets", []):
            exprs += 1
            problems += _check_expression(target["expr"], f"panel {panel['title']!r}", catalogue)
    assert exprs > 0
    assert not problems, "\n".join(problems)


def test_dashboard_shows_every_metric():
    # A metric with no panel and no alert is one nobody looks at; add a panel with it.
    used = set()
    for panel in _dashboard_panels():
        for target in panel.get("targets", []):
            used |= set(_METRIC.findall(target["expr"]))
    families = {re.sub(r"_(bucket|count|sum)$", "", name) for name in _catalogue()}
    shown = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used}
    assert families <= shown, f"no panel for {sorted(families - shown)}"


def test_dashboard_is_wired_to_the_provisioned_datasource():
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    uids = {source["uid"] for source in datasources}
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = _dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "relance.yml").read_text()
    )["providers"][0]
    # compose mounts deploy/grafana/dashboards at the provider's path
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# -- Kubernetes ----------------------------------------------------------------------------

def _k8s_documents() -> list[tuple[str, dict]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path.name, document))
    return documents


def _by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in _k8s_documents() if doc["kind"] == kind]


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[test]'")
    return kubernetes_validate


def test_k8s_manifests_validate_against_the_kubernetes_schemas():
    # kubernetes-validate ships the schemas in the package: no network, no cluster.
    kubernetes_validate = _kubernetes_validate()
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

    documents = _k8s_documents()
    assert documents
    problems = []
    for filename, document in documents:
        try:
            # strict: an unknown (misspelt) field is an error, not silently dropped
            kubernetes_validate.validate(document, K8S_VERSION, strict=True)
        except ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{filename} {document['kind']}/{document['metadata']['name']}: {path}: {exc.message}")
        except SchemaNotFoundError as exc:
            problems.append(f"{filename}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_k8s_validator_rejects_a_misspelt_field():
    kubernetes_validate = _kubernetes_validate()
    from kubernetes_validate.utils import ValidationError

    deployment = next(d for d in _by_kind("Deployment"))
    broken = json.loads(json.dumps(deployment))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["ports"][0]["contianerPort"] = container["ports"][0].pop("containerPort")
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _workers() -> list[dict]:
    return [d for d in _by_kind("Deployment") if _container(d)["args"][0] == "worker"]


def _role(deployment: dict) -> str:
    """A worker Deployment's first role, or the gateway."""
    args = _container(deployment)["args"]
    return args[2] if args[0] == "worker" else args[0]


def test_k8s_deploys_each_role_with_probes_resources_and_scrape_annotations():
    deployments = _workers()
    roles = {}
    run: set[str] = set()
    for deployment in deployments:
        container = _container(deployment)
        args = container["args"]
        run |= _roles_run(args)
        roles[args[2]] = deployment
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": WEB_PORT}

        def probe_port(probe: dict) -> int:
            port = probe["httpGet"]["port"]
            return ports[port] if isinstance(port, str) else port

        assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
        assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert probe_port(container[probe]) == WEB_PORT, probe
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), kind
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(WEB_PORT)
        assert annotations["prometheus.io/path"] == "/metrics"
        assert deployment["spec"]["replicas"] >= 1
        # the selector must select the pods the Deployment makes (else the API rejects it)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert sorted(roles) == sorted(ROLES)
    assert run == set(ALL_ROLES)


def test_k8s_services_select_the_pods_of_their_role():
    # A selector that matches nothing is valid YAML and a valid Service: it just has no
    # endpoints, and its role disappears from the metrics.
    pods = {_role(d): (d["spec"]["template"]["metadata"]["labels"], _container(d)) for d in _by_kind("Deployment")}
    services = _by_kind("Service")
    covered = set()
    for service in services:
        selector = service["spec"]["selector"]
        matching = [role for role, (labels, _) in pods.items() if selector.items() <= labels.items()]
        assert len(matching) == 1, f"{service['metadata']['name']} selects {matching}"
        labels, container = pods[matching[0]]
        port_names = {p["name"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names or port["targetPort"] == WEB_PORT
        covered.add(matching[0])
    assert covered == set(ROLES) | {GATEWAY}


def test_k8s_settings_are_real_settings_and_the_registry_is_mounted():
    configmaps = {c["metadata"]["name"]: c for c in _by_kind("ConfigMap")}
    settings = configmaps["relance-settings"]["data"]
    unknown = sorted(k for k in settings if not k.startswith(ENV_PREFIX) or
                     k[len(ENV_PREFIX):].lower() not in Settings.names())
    assert not unknown, f"not settings: {unknown}"
    parsed = Settings.from_mapping({k[len(ENV_PREFIX):].lower(): v for k, v in settings.items()})
    assert parsed.web_port == WEB_PORT

    # RELANCE_REGISTRY must point at bots.toml inside the mounted registry ConfigMap
    registry = configmaps["relance-registry"]["data"]
    bots = tomllib.loads(registry["bots.toml"])
    assert bots["bot"] and all(bot["id"] for bot in bots["bot"])
    for deployment in _by_kind("Deployment"):
        assert {"configMapRef": {"name": "relance-settings"}} in _container(deployment)["envFrom"]
    for deployment in _workers():   # the gateway reads no registry and keeps no data
        container = _container(deployment)
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        mounted = {
            m["mountPath"].rstrip("/") + "/" + key
            for m in container["volumeMounts"]
            if volumes[m["name"]].get("configMap", {}).get("name") == "relance-registry"
            for key in registry
        }
        assert settings["RELANCE_REGISTRY"] in mounted
        data_mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert settings["RELANCE_DATA_DIR"] in data_mounts   # the root filesystem is read-only


def test_k8s_environment_names_only_settings_and_secret_files():
    # RELANCE_<NAME>_FILE exists for secret settings only; anything else is silently ignored.
    allowed = {ENV_PREFIX + name.upper() for name in Settings.names()}
    allowed |= {ENV_PREFIX + name.upper() + "_FILE" for name in Settings.secret_names()}
    for deployment in _by_kind("Deployment"):
        for variable in _container(deployment).get("env", []):
            assert variable["name"] in allowed, variable["name"]
            if variable["name"][len(ENV_PREFIX):].lower() in Settings.secret_names():
                assert "value" not in variable, f"{variable['name']} written in a manifest"


def test_k8s_gateway_reads_its_secrets_from_a_mounted_secret_and_is_reached_through_tls():
    [deployment] = [d for d in _by_kind("Deployment") if _role(d) == GATEWAY]
    container = _container(deployment)
    settings = {c["metadata"]["name"]: c for c in _by_kind("ConfigMap")}["relance-settings"]["data"]
    gateway_port = Settings.from_mapping({"gateway_port": settings["RELANCE_GATEWAY_PORT"]}).gateway_port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"webhooks": gateway_port, "http": WEB_PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
    # Each secret file lies in a mounted Secret volume.
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    secret_dirs = {m["mountPath"].rstrip("/") for m in container["volumeMounts"] if "secret" in volumes[m["name"]]}
    files = {v["name"]: v["value"] for v in container["env"] if v["name"].endswith("_FILE")}
    assert {"RELANCE_APP_SECRET_FILE", "RELANCE_VERIFY_TOKEN_FILE"} <= set(files)
    for path in files.values():
        assert path.rsplit("/", 1)[0] in secret_dirs, path
    # The Ingress terminates TLS for its host and sends /webhooks/ to the gateway's webhooks port.
    [ingress] = _by_kind("Ingress")
    [service] = [s for s in _by_kind("Service") if s["metadata"]["name"] == deployment["metadata"]["name"]]
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    tls_hosts = {host for entry in ingress["spec"]["tls"] for host in entry["hosts"]}
    assert all(entry["secretName"] for entry in ingress["spec"]["tls"])
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in tls_hosts
        for path in rule["http"]["paths"]:
            assert path["path"] == "/webhooks/" and path["pathType"] == "Prefix"
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert service_ports[backend["port"]["name"]]["targetPort"] == "webhooks"


# -- Kubernetes: security (issue 19) --------------------------------------------------------------

def _pods() -> list[dict]:
    """Every pod template: the Deployments' and the topic Job's."""
    return [d["spec"]["template"] for d in _by_kind("Deployment") + _by_kind("Job")]


def test_k8s_every_container_runs_as_non_root_on_a_read_only_root_file_system():
    pods = _pods()
    assert len(pods) == len(ROLES) + 2  # the workers, the gateway and the topic Job
    for pod in pods:
        pod_context = pod["spec"].get("securityContext", {})
        for container in pod["spec"]["containers"]:
            context = container["securityContext"]
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, container["args"]
            assert context.get("runAsUser", pod_context.get("runAsUser", 0)) != 0, container["args"]
            assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]


def test_k8s_secrets_are_mounted_files_and_kafka_and_redis_are_reached_securely():
    settings = {c["metadata"]["name"]: c for c in _by_kind("ConfigMap")}["relance-settings"]["data"]
    parsed = Settings.from_mapping({k[len(ENV_PREFIX):].lower(): v for k, v in settings.items()})
    assert parsed.kafka_security_protocol == "SASL_SSL" and parsed.redis_url.startswith("rediss://")
    for pod in _pods():
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        [container] = pod["spec"]["containers"]
        # No secret as an environment value: env shows in `kubectl describe`, crash dumps, child processes.
        assert not any("secretKeyRef" in v.get("valueFrom", {}) for v in container.get("env", []))
        assert not any("secretRef" in source for source in container["envFrom"])
        secret_dirs = {m["mountPath"] for m in container.get("volumeMounts", []) if "secret" in volumes[m["name"]]}
        files = {v["name"]: v["value"] for v in container.get("env", []) if v["name"].endswith("_FILE")}
        for path in files.values():
            assert path.rsplit("/", 1)[0] in secret_dirs, (container["args"], path)
        # Every pod talks to Kafka: its credentials and CA are files of a mounted Secret.
        assert {"RELANCE_KAFKA_USERNAME_FILE", "RELANCE_KAFKA_PASSWORD_FILE"} <= set(files), container["args"]
        assert parsed.kafka_ca_file.rsplit("/", 1)[0] in secret_dirs, container["args"]
        if container["args"][0] == "worker":
            assert {"RELANCE_REDIS_USERNAME_FILE", "RELANCE_REDIS_PASSWORD_FILE"} <= set(files)
            assert parsed.redis_ca_file.rsplit("/", 1)[0] in secret_dirs
    # Each token of the registry is a file in the sender's mounted Secret.
    [sender] = [d for d in _workers() if _role(d) == "sender"]
    sender_dirs = {m["mountPath"] for m in _container(sender)["volumeMounts"]}
    registry = tomllib.loads({c["metadata"]["name"]: c for c in _by_kind("ConfigMap")}["relance-registry"]["data"]["bots.toml"])
    for bot in registry["bot"]:
        for reference in bot["tokens"].values():
            assert reference.startswith("file:") and reference[5:].rsplit("/", 1)[0] in sender_dirs, reference


def _selects(selector: dict, labels: dict) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _component(pod: dict) -> str:
    return pod["metadata"]["labels"]["app.kubernetes.io/component"]


def test_k8s_network_policies_deny_all_then_open_only_the_gateway_and_the_workers_needs():
    policies = _by_kind("NetworkPolicy")
    pods = _pods()
    # Everything is denied first, both ways, for every pod of the namespace.
    assert any(p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies)
    egress_ports: dict[str, set[int]] = {_component(pod): set() for pod in pods}
    for policy in policies:
        spec = policy["spec"]
        selected = [pod for pod in pods if _selects(spec["podSelector"], pod["metadata"]["labels"])]
        assert selected, f"{policy['metadata']['name']} selects no pod"
        for rule in spec.get("ingress", []):
            ports = {port["port"] for port in rule["ports"]}
            # From outside the namespace, only the gateway's webhooks port and the web ports
            # (for Prometheus); a rule with no `from` or no `ports` would open everything.
            assert rule.get("from") and ports, policy["metadata"]["name"]
            assert ports <= {"http", "webhooks"}
            if "webhooks" in ports:
                assert {_component(pod) for pod in selected} == {GATEWAY}
        for rule in spec.get("egress", []):
            assert rule.get("ports"), policy["metadata"]["name"]  # no rule opens every port
            for pod in selected:
                egress_ports[_component(pod)] |= {port["port"] for port in rule["ports"]}
    # DNS and Kafka for everyone; Redis for the workers; HTTPS for the LLM and the send APIs only.
    for component, ports in egress_ports.items():
        expected = {53, 9093} | ({6380} if component in ROLES else set())
        expected |= {443} if component in ("generator", "sender") else set()
        assert ports == expected, component


def test_the_image_holds_every_package_and_the_compiled_core():
    """Each Python package is copied into the image, and the compiled decision core is
    built in a stage of its own and installed: the engine's default core is native."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ") and "--from" not in line}
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert packages <= copied, packages - copied
    assert "COPY native /native" in dockerfile and "maturin build --release" in dockerfile
    assert "COPY --from=native /wheels /wheels" in dockerfile and "/wheels/*.whl" in dockerfile
