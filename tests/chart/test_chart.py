"""The Helm chart: lint, schema, Kubernetes validity, the rendered config against the real
binary, security facts and secret hygiene, for every supported value set."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import tomllib

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import (
    CHART, DEPLOY, MINIMAL, NAMESPACE, RELEASE, SECRETS, VALUE_SETS,
    callbridge_binary, container, kinds, merge, notes, one, render, secret_data, strip,
)

K8S_VERSIONS = ["1.30.0", "1.37.0"]
# Prometheus Operator kinds: no schema in kubernetes-validate (CRDs); checked by hand below.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
SETS = sorted(VALUE_SETS)


# --- lint and schema ---------------------------------------------------------------------------

def test_lint_without_values_has_no_errors():
    report = helm.lint(CHART, strict=True)
    errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert errors == [], errors


@pytest.mark.parametrize("name", SETS)
def test_lint_with_value_set_has_no_errors(name):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True)
    errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert errors == [], errors


def test_plain_defaults_refuse_to_render_and_name_what_is_missing():
    with pytest.raises(helm.HelmRenderError, match="client_id"):
        render(None)
    with pytest.raises(helm.HelmRenderError, match="public_url"):
        render(merge(MINIMAL, {"config": {"webhook": {"public_url": ""}}}))
    with pytest.raises(helm.HelmRenderError, match="webhookSecret"):
        render(merge(MINIMAL, {"secrets": {"webhookSecret": "too-short"}}))
    with pytest.raises(helm.HelmRenderError, match="kafkaSaslPassword"):
        render(merge(MINIMAL, {"config": {"kafka": {"security_protocol": "sasl_ssl"}}}))


@pytest.mark.parametrize("path", [
    ("goto", "client_secret"), ("goto", "personal_access_token"), ("goto", "refresh_token"),
    ("webhook", "secret"), ("kafka", "sasl", "password"), ("kafka", "tls", "key_password"),
])
def test_schema_refuses_secrets_in_config(path):
    values = merge(MINIMAL, {})
    node = values["config"]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = "s3cr3t-in-config"
    with pytest.raises(helm.HelmValuesError, match=path[-1]):
        render(values)


@pytest.mark.parametrize("bad,where", [
    ({"config": {"goto": {"account_keys": [1234]}}}, "account_keys"),
    ({"config": {"channel": {"kind": "sse"}}}, "kind"),
    ({"config": {"kafka": {"librdkafka": {"bootstrap.servers": "x:1"}}}}, "bootstrap.servers"),
    ({"config": {"sequencer": {"gap_timeout": 2}}}, "gap_timeout"),
    # Durations the binary refuses at zero (a zero interval panics or spins).
    ({"config": {"channel": {"repair_interval": "0s"}}}, "repair_interval"),
    ({"config": {"channel": {"ping_interval": "0 ms"}}}, "ping_interval"),
    ({"config": {"kafka": {"ack_timeout": "0s"}}}, "ack_timeout"),
    ({"config": {"shutdown": {"timeout": "0m 0s"}}}, "timeout"),
    ({"replicaCount": "2"}, "replicaCount"),
    ({"config": {"goto": {"unknown_key": "x"}}}, "unknown_key"),
])
def test_schema_refuses_wrong_types_and_unknown_keys(bad, where):
    with pytest.raises(helm.HelmValuesError, match=where):
        render(merge(MINIMAL, bad))


def test_schema_refuses_every_librdkafka_property_the_binary_refuses():
    """The schema's list and the binary's (`OWNED_PROPERTIES` in src/kafka/config.rs) stay one
    list: a property only the binary refuses passes `helm install` and then stops the pod."""
    import json
    import pathlib
    source = (pathlib.Path(CHART).parents[1] / "src" / "kafka" / "config.rs").read_text()
    table = source[source.index("const OWNED_PROPERTIES"):]
    table = table[:table.index("];")]
    owned = set(re.findall(r'^\s*\(?\s*"([a-z.]+)",', table, re.M))
    assert {"bootstrap.servers", "message.timeout.ms", "session.timeout.ms"} <= owned, owned
    schema = json.loads((pathlib.Path(CHART) / "values.schema.json").read_text())
    refused = set(schema["properties"]["config"]["properties"]["kafka"]["properties"]
                  ["librdkafka"]["propertyNames"]["not"]["enum"])
    assert refused == owned, {"only the binary": owned - refused, "only the schema": refused - owned}


def test_websocket_runs_several_replicas_and_refuses_ingress():
    ws = VALUE_SETS["websocket"]
    # Several replicas with a PAT (a refresh token is refused, see below).
    pat = {"secrets": {"gotoRefreshToken": "", "gotoPersonalAccessToken": SECRETS["gotoPersonalAccessToken"]}}
    docs = render(merge(merge(ws, pat), {"replicaCount": 3}))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    with pytest.raises(helm.HelmRenderError, match="ingress"):
        render(merge(ws, {"ingress": {"enabled": True}}))


# --- Kubernetes validity -----------------------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", SETS)
def test_every_manifest_validates_against_kubernetes_schemas(rendered, name, version):
    docs = rendered[name]
    assert len(docs) >= 5
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        # Raises on an invalid manifest and on a kind without a schema (no silent skip).
        kubernetes_validate.validate(strip(doc), version, strict=True)


def test_expected_objects_per_value_set(rendered):
    base = {"ConfigMap", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"}
    assert kinds(rendered["defaults"]) == base | {"Secret"}
    assert kinds(rendered["webhook-full"]) == base | {
        "Secret", "Ingress", "ServiceMonitor", "PrometheusRule", "NetworkPolicy", "HorizontalPodAutoscaler"}
    assert kinds(rendered["websocket"]) == base | {"Secret"}
    assert kinds(rendered["existing-secret"]) == base
    assert kinds(rendered["existing-secret-custom"]) == base
    assert kinds(rendered["sasl-tls"]) == base | {"Secret"}


def services(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}


def test_service_monitor_shape(rendered):
    docs = rendered["webhook-full"]
    sm = one(docs, "ServiceMonitor")
    svcs = services(docs)
    svc = svcs[f"{RELEASE}-admin"]
    assert sm["metadata"]["labels"]["release"] == "prom"
    sel = sm["spec"]["selector"]["matchLabels"]
    # It selects the admin Service, and only it.
    selected = [n for n, d in svcs.items() if all(d["metadata"]["labels"].get(k) == v for k, v in sel.items())]
    assert selected == [f"{RELEASE}-admin"]
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] == "admin" and ep["path"] == "/metrics"
    assert "admin" in {p["name"] for p in svc["spec"]["ports"]}
    assert re.fullmatch(r"[0-9]+[smh]", ep["interval"])


def test_prometheus_rule_matches_deploy_alerts_file(rendered):
    rule = one(rendered["webhook-full"], "PrometheusRule")
    with open(DEPLOY / "alerts.yaml") as f:
        plain = yaml.safe_load(f)
    assert rule["spec"] == plain


def test_prometheus_rule_thresholds_come_from_values():
    docs = render(merge(MINIMAL, {"prometheusRule": {"enabled": True, "gapOldestAgeSeconds": 120,
                                                      "rawConsumerLag": 5000}}))
    rules = {r["alert"]: r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert rules["CallbridgeGapOpenTooLong"]["expr"].endswith("> 120")
    assert "> 5000" in rules["CallbridgeRawConsumerLagGrowing"]["expr"]


# --- the rendered config.toml against the real binary -------------------------------------------

SECRETS_MOUNT = "/etc/callbridge/secrets"


def secret_mount(docs: list[dict]) -> tuple[dict, dict]:
    """The container's mount of the Secret and the pod volume behind it."""
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in container(docs)["volumeMounts"] if m["mountPath"] == SECRETS_MOUNT)
    return mount, next(v for v in pod["volumes"] if v["name"] == mount["name"])


def write_secret_files(docs: list[dict], values: dict, root: str, empty: str = "") -> str:
    """Writes the files the kubelet would put in the Secret's volume (resolved against the
    chart-made Secret, dummies for an existing Secret) under `root`, and returns config.toml with
    the mount path moved there. The file named `empty` is written empty."""
    made = secret_data(docs) if not values.get("existingSecret") else None
    mount, vol = secret_mount(docs)
    for item in vol["secret"]["items"]:
        if made is None:
            content = "dummy-" + "x" * 40
        else:
            assert item["key"] in made, f"the volume mounts {item['key']}, which the Secret lacks"
            content = made[item["key"]]
        with open(os.path.join(root, item["path"]), "w") as f:
            f.write("" if item["path"] == empty else content)
    toml = one(docs, "ConfigMap")["data"]["config.toml"]
    return toml.replace(mount["mountPath"] + "/", root + "/")


def check_config(toml: str) -> subprocess.CompletedProcess:
    binary = callbridge_binary()
    assert binary.exists(), f"{binary} missing: run cargo build"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.toml")
        with open(path, "w") as f:
            f.write(toml)
        return subprocess.run([str(binary), "check-config", "--config", path], env=env,
                              capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", SETS)
def test_rendered_config_passes_check_config(rendered, name):
    docs = rendered[name]
    cm = one(docs, "ConfigMap")
    c = container(docs)
    assert c["args"] == ["run", "--config", "/etc/callbridge/config.toml"]
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/callbridge/config.toml")
    vol = next(v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
               if v["name"] == mount["name"])
    assert vol["configMap"]["name"] == cm["metadata"]["name"] and mount["subPath"] == "config.toml"
    with tempfile.TemporaryDirectory() as root:
        out = check_config(write_secret_files(docs, VALUE_SETS[name], root))
    assert out.returncode == 0, out.stdout + out.stderr


def test_check_config_catches_a_broken_render():
    """The check above can fail: with an empty webhook secret file the binary refuses the config."""
    docs = render(VALUE_SETS["defaults"])
    with tempfile.TemporaryDirectory() as root:
        out = check_config(write_secret_files(docs, VALUE_SETS["defaults"], root, empty="webhook-secret"))
    assert out.returncode == 64 and "webhook.secret" in out.stdout + out.stderr


def test_config_values_reach_the_toml(rendered):
    toml = one(rendered["sasl-tls"], "ConfigMap")["data"]["config.toml"]
    assert 'security_protocol = "sasl_ssl"' in toml
    assert 'mechanism = "SCRAM-SHA-512"' in toml
    assert '"compression.type" = "lz4"' in toml
    # Numbers and booleans render unquoted; the binary takes them as librdkafka's text
    # (test_rendered_config_passes_check_config runs this set through check-config).
    assert '"linger.ms" = 5' in toml and '"socket.nagle.disable" = true' in toml
    assert "replication_factor = -1" in toml
    assert "partitions = 12" in toml  # an integer, not 12.0
    assert 'other_sources = "callbridge.other"' in toml
    default_toml = one(rendered["defaults"], "ConfigMap")["data"]["config.toml"]
    assert "other_sources" not in default_toml  # null: left to the bridge's default


# --- security and secrets ----------------------------------------------------------------------

@pytest.mark.parametrize("name", SETS)
def test_security_context(rendered, name):
    docs = rendered[name]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    sc = container(docs)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    tmp = next(m for m in container(docs)["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", SETS)
def test_no_secret_value_outside_the_secret(rendered, name):
    docs = rendered[name]
    values = VALUE_SETS[name]
    secret_values = [v for v in values.get("secrets", {}).values() if v]
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = yaml.safe_dump(strip(doc))
        for v in secret_values:
            assert v not in text, f"secret value leaked into {doc['kind']}"
    toml = one(docs, "ConfigMap")["data"]["config.toml"]
    assert not re.search(r"^\s*(client_secret|personal_access_token|refresh_token|secret|password|key_password)\s*=",
                         toml, re.M)
    if not values.get("existingSecret"):
        assert sorted(secret_data(docs).values()) == sorted(secret_values)


# The secrets each value set must get, as files: `*_file` key -> (Secret key, file name).
CLIENT = {"goto.client_secret_file": ("goto-client-secret", "goto-client-secret")}
PAT = {"goto.personal_access_token_file": ("goto-personal-access-token", "goto-personal-access-token")}
WEBHOOK = {"webhook.secret_file": ("webhook-secret", "webhook-secret")}
EXPECTED_FILES = {
    "defaults": CLIENT | PAT | WEBHOOK,
    "webhook-full": CLIENT | PAT | WEBHOOK,
    "websocket": CLIENT | {"goto.refresh_token_file": ("goto-refresh-token", "goto-refresh-token")},
    "existing-secret": {"goto.client_secret_file": ("client-secret", "goto-client-secret")} | PAT | WEBHOOK,
    "existing-secret-custom": {
        "goto.client_secret_file": ("oauth-client-secret", "goto-client-secret"),
        "goto.refresh_token_file": ("oauth-refresh-token", "goto-refresh-token"),
        "webhook.secret_file": ("path-secret", "webhook-secret"),
        "kafka.sasl.password_file": ("sasl-pass", "kafka-sasl-password"),
        "kafka.tls.key_password_file": ("client-key-pass", "kafka-tls-key-password"),
    },
    "sasl-tls": CLIENT | PAT | WEBHOOK
    | {"kafka.sasl.password_file": ("kafka-sasl-password", "kafka-sasl-password")},
}
SECRET_VARIABLES = {
    "CALLBRIDGE_GOTO__CLIENT_SECRET", "CALLBRIDGE_GOTO__PERSONAL_ACCESS_TOKEN",
    "CALLBRIDGE_GOTO__REFRESH_TOKEN", "CALLBRIDGE_WEBHOOK__SECRET",
    "CALLBRIDGE_KAFKA__SASL__PASSWORD", "CALLBRIDGE_KAFKA__TLS__KEY_PASSWORD",
}


def file_keys(docs: list[dict]) -> dict[str, str]:
    """Every `*_file` key of the rendered config.toml, dotted, with its path."""
    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                yield from walk(v, f"{prefix}{k}.")
            elif k.endswith("_file"):
                yield f"{prefix}{k}", v
    return dict(walk(tomllib.loads(one(docs, "ConfigMap")["data"]["config.toml"]), ""))


def secret_items(docs: list[dict]) -> dict[str, str]:
    """The Secret volume's items: file name -> Secret key."""
    return {i["path"]: i["key"] for i in secret_mount(docs)[1]["secret"]["items"]}


def test_every_value_set_has_its_expected_secret_files():
    assert set(EXPECTED_FILES) == set(VALUE_SETS)


@pytest.mark.parametrize("name", SETS)
def test_no_secret_is_an_environment_variable(rendered, name):
    """Secrets reach the bridge as files: no secretKeyRef, no envFrom, no secret variable."""
    c = container(rendered[name])
    assert "envFrom" not in c
    for e in c.get("env") or []:
        assert "secretKeyRef" not in e.get("valueFrom", {}), e
        assert e["name"] not in SECRET_VARIABLES, e


@pytest.mark.parametrize("name", SETS)
def test_secret_is_mounted_read_only_with_only_the_keys_in_use(rendered, name):
    docs = rendered[name]
    mount, vol = secret_mount(docs)
    assert mount["readOnly"] is True and "subPath" not in mount
    assert vol["secret"]["secretName"] == (VALUE_SETS[name].get("existingSecret") or RELEASE)
    # Owner (root) and group read only; the group is fsGroup, which the bridge runs with.
    assert vol["secret"]["defaultMode"] == 0o440
    assert not vol["secret"].get("optional")
    assert all("mode" not in i for i in vol["secret"]["items"])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == container(docs)["securityContext"]["runAsGroup"]
    want = EXPECTED_FILES[name]
    assert secret_items(docs) == {file: key for key, file in want.values()}


@pytest.mark.parametrize("name", SETS)
def test_rendered_config_points_at_the_secret_files(rendered, name):
    want = {k: f"{SECRETS_MOUNT}/{file}" for k, (_, file) in EXPECTED_FILES[name].items()}
    assert file_keys(rendered[name]) == want


def test_existing_secret_with_custom_keys(rendered):
    """Renamed keys are mounted under the usual file names, so config.toml does not change."""
    docs = rendered["existing-secret-custom"]
    assert "Secret" not in kinds(docs)
    assert set(secret_items(docs).values()) == {
        "oauth-client-secret", "oauth-refresh-token", "path-secret", "sasl-pass", "client-key-pass"}
    assert "oauth-pat" not in secret_items(docs).values()
    text = notes(VALUE_SETS["existing-secret-custom"])
    assert "bridge-credentials" in text and "oauth-refresh-token" in text and "oauth-pat" not in text
    # Told it holds a PAT instead: the PAT, not the refresh token.
    pat = render(merge(VALUE_SETS["existing-secret-custom"],
                       {"existingSecretContents": {"gotoToken": "personalAccessToken"}}))
    assert file_keys(pat)["goto.personal_access_token_file"] == f"{SECRETS_MOUNT}/goto-personal-access-token"
    assert "goto.refresh_token_file" not in file_keys(pat)
    assert secret_items(pat)["goto-personal-access-token"] == "oauth-pat"
    assert "goto-refresh-token" not in secret_items(pat)


def test_a_pat_never_points_at_a_refresh_token_file():
    """The bridge fails on a *_file naming a missing file: a PAT-only Secret has no refresh token
    key, so nothing may point at one (and with both tokens the bridge uses the PAT)."""
    for values in [MINIMAL, merge(MINIMAL, {"secrets": {"gotoRefreshToken": "refresh-token-9e8d7c6b"}})]:
        docs = render(values)
        assert "goto.refresh_token_file" not in file_keys(docs)
        assert "goto-refresh-token" not in secret_items(docs)
        assert "refresh_token_file" not in one(docs, "ConfigMap")["data"]["config.toml"]
    # Likewise the refresh token alone: no PAT file.
    docs = render(merge(MINIMAL, REFRESH))
    assert set(file_keys(docs)) == {"goto.client_secret_file", "goto.refresh_token_file", "webhook.secret_file"}
    # Optional secrets are pointed at only when set: the Kafka key password, the SASL password
    # (sasl_* only), the webhook secret (webhook mode only).
    docs = render(merge(MINIMAL, {"secrets": {"kafkaTlsKeyPassword": "key-pass-1a2b"}}))
    assert file_keys(docs)["kafka.tls.key_password_file"] == f"{SECRETS_MOUNT}/kafka-tls-key-password"
    assert secret_data(docs)["kafka-tls-key-password"] == "key-pass-1a2b"
    ws = render(merge(VALUE_SETS["websocket"], {"secrets": {"webhookSecret": SECRETS["webhookSecret"]}}))
    assert "webhook.secret_file" not in file_keys(ws) and "webhook-secret" not in secret_items(ws)


def test_a_file_key_set_in_config_wins_and_is_not_mounted():
    docs = render(merge(merge(MINIMAL, REFRESH), SHARED))
    assert file_keys(docs)["goto.refresh_token_file"] == "/var/lib/callbridge/token/refresh-token"
    assert "goto-refresh-token" not in secret_items(docs)
    own = {"config": {"kafka": {"security_protocol": "sasl_ssl",
                                "sasl": {"mechanism": "PLAIN", "username": "u",
                                         "password_file": "/mnt/own/kafka-password"}}},
           "secrets": {"kafkaSaslPassword": "sasl-password-3c4d5e6f"}}
    docs = render(merge(MINIMAL, own))
    assert file_keys(docs)["kafka.sasl.password_file"] == "/mnt/own/kafka-password"
    assert "kafka-sasl-password" not in secret_items(docs)


def test_secret_files_need_fs_group():
    """Files of mode 0440 owned by root are readable by the non-root bridge through fsGroup only."""
    with pytest.raises(helm.HelmRenderError, match="fsGroup"):
        render(merge(MINIMAL, {"podSecurityContext": {"fsGroup": None}}))
    # A platform that picks uid and fsGroup itself (runAsUser unset) renders.
    render(merge(MINIMAL, {"podSecurityContext": {"fsGroup": None, "runAsUser": None},
                           "securityContext": {"runAsUser": None}}))


@pytest.mark.parametrize("name", SETS)
def test_probes_ports_and_service(rendered, name):
    docs = rendered[name]
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # Readiness is "can take notifications" (listener, Kafka, not shutting down), not /readyz.
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz/traffic", "port": "admin"}
    assert ports["admin"] == 9090
    svcs = services(docs)
    admin = svcs[f"{RELEASE}-admin"]["spec"]
    assert admin["type"] == "ClusterIP"
    assert [(p["name"], p["port"], p["targetPort"]) for p in admin["ports"]] == [("admin", 9090, "admin")]
    if VALUE_SETS[name]["config"].get("channel", {}).get("kind") == "websocket":
        assert "webhook" not in ports
        assert list(svcs) == [f"{RELEASE}-admin"]
        assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    else:
        assert ports["webhook"] == 8080
        webhook = svcs[RELEASE]["spec"]
        assert [(p["name"], p["port"], p["targetPort"]) for p in webhook["ports"]] == [
            ("webhook", 8080, "webhook")]
        # Not-ready pods (listener not bound, Kafka unreachable, shutting down) get no webhooks.
        assert webhook["publishNotReadyAddresses"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_container_ports_follow_listen_addresses():
    docs = render(merge(MINIMAL, {"config": {"webhook": {"listen": "0.0.0.0:8181"},
                                             "admin": {"listen": "0.0.0.0:9191"}}}))
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports == {"webhook": 8181, "admin": 9191}


def test_grace_period_replicas_and_hpa(rendered):
    full = one(rendered["webhook-full"], "Deployment")["spec"]
    assert full["template"]["spec"]["terminationGracePeriodSeconds"] == 77
    assert "replicas" not in full  # the HPA owns it
    hpa = one(rendered["webhook-full"], "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RELEASE}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert {m["resource"]["name"] for m in hpa["metrics"]} == {"cpu", "memory"}
    dflt = one(rendered["defaults"], "Deployment")["spec"]
    assert dflt["replicas"] == 1 and dflt["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    pdb = one(rendered["webhook-full"], "PodDisruptionBudget")["spec"]
    assert pdb == {"minAvailable": 1, "selector": full["selector"],
                   "unhealthyPodEvictionPolicy": "AlwaysAllow"}


def test_ingress_exposes_only_the_webhook_path(rendered):
    ing = one(rendered["webhook-full"], "Ingress")["spec"]
    assert ing["ingressClassName"] == "nginx"
    (rule,) = ing["rules"]
    assert rule["host"] == "callbridge.example.com"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/goto/webhook" and path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {"name": RELEASE, "port": {"name": "webhook"}}


def test_network_policy(rendered):
    np = one(rendered["webhook-full"], "NetworkPolicy")["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    ingress = {r["ports"][0]["port"]: r for r in np["ingress"]}
    assert ingress["webhook"]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"}
    assert ingress["admin"]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}
    egress_ports = {(p["port"], p["protocol"]) for r in np["egress"] for p in r["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP"), (9094, "TCP")} <= egress_ports
    kafka = next(r for r in np["egress"] if r["ports"][0]["port"] == 9094)
    assert kafka["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]


def test_config_change_rolls_pods():
    a = one(render(MINIMAL), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    b = one(render(merge(MINIMAL, {"config": {"sequencer": {"gap_timeout": "3s"}}})),
            "Deployment")["spec"]["template"]["metadata"]["annotations"]
    c = one(render(merge(MINIMAL, {"secrets": {"gotoClientSecret": "rotated-secret"}})),
            "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", a["checksum/config"])
    assert a["checksum/config"] != b["checksum/config"]
    assert a["checksum/secret"] == b["checksum/secret"]
    assert a["checksum/secret"] != c["checksum/secret"]


def test_notes_render():
    text = notes(VALUE_SETS["defaults"])
    assert "https://callbridge.example.com/goto/webhook/<secret>" in text
    assert f"svc/{RELEASE}-admin" in text
    ws = notes(VALUE_SETS["websocket"])
    assert "WebSocket mode" in ws and "one replica only" not in ws.lower()


def test_readme_lists_every_value():
    """helm/callbridge/README.md names every leaf of values.yaml."""
    with open(CHART / "values.yaml") as f:
        values = yaml.safe_load(f)
    with open(CHART / "README.md") as f:
        readme = f.read()

    # Objects passed to Kubernetes whole are documented as one value.
    whole = {"podSecurityContext", "securityContext", "resources", "probes.liveness", "probes.readiness"}

    def leaves(node, prefix=""):
        if isinstance(node, dict) and node and prefix not in whole:
            for k, v in node.items():
                yield from leaves(v, f"{prefix}.{k}" if prefix else k)
        else:
            yield prefix

    missing = [p for p in leaves(values) if f"`{p}`" not in readme]
    assert missing == [], f"README.md does not document: {missing}"


# --- availability, exposure, credentials -------------------------------------------------------

def test_admin_port_stays_inside_the_cluster_with_a_public_service_type():
    for kind in ["LoadBalancer", "NodePort"]:
        svcs = services(render(merge(MINIMAL, {"service": {"type": kind}})))
        assert svcs[RELEASE]["spec"]["type"] == kind
        assert [p["name"] for p in svcs[RELEASE]["spec"]["ports"]] == ["webhook"]
        assert svcs[f"{RELEASE}-admin"]["spec"]["type"] == "ClusterIP"


def test_admin_service_name_fits_with_a_long_release_name():
    docs = render(MINIMAL, name="a" * 53)
    for name in services(docs):
        assert len(name) <= 63, name


def test_pdb_lets_a_drain_evict_pods_that_are_not_ready():
    """During a Kafka outage every pod is NotReady: with Kubernetes' default policy the budget
    counts them as disrupted already and blocks every eviction, so no node can be drained."""
    pdb = one(render(MINIMAL), "PodDisruptionBudget")["spec"]
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    pdb = one(render(merge(MINIMAL, {"podDisruptionBudget": {"unhealthyPodEvictionPolicy": "IfHealthyBudget"}})),
              "PodDisruptionBudget")["spec"]
    assert pdb["unhealthyPodEvictionPolicy"] == "IfHealthyBudget"


REFRESH = {"secrets": {"gotoPersonalAccessToken": "", "gotoRefreshToken": "refresh-token-9e8d7c6b"}}
SHARED = {
    "config": {"goto": {"refresh_token_file": "/var/lib/callbridge/token/refresh-token"}},
    "extraVolumes": [{"name": "token", "persistentVolumeClaim": {"claimName": "callbridge-token"}}],
    "extraVolumeMounts": [{"name": "token", "mountPath": "/var/lib/callbridge/token"}],
}


@pytest.mark.parametrize("several", [
    {"replicaCount": 2},
    {"autoscaling": {"enabled": True}},
])
def test_refresh_token_with_several_replicas_refuses_to_render(several):
    with pytest.raises(helm.HelmRenderError, match="personal access token"):
        render(merge(merge(MINIMAL, REFRESH), several))
    # The token file on a per-pod or read-only volume is no better.
    per_pod = merge(SHARED, {"config": {"goto": {"refresh_token_file": "/tmp/refresh-token"}}})
    with pytest.raises(helm.HelmRenderError, match="refresh_token_file"):
        render(merge(merge(merge(MINIMAL, REFRESH), several), per_pod))
    read_only = merge(SHARED, {"extraVolumeMounts": [
        {"name": "token", "mountPath": "/var/lib/callbridge/token", "readOnly": True}]})
    with pytest.raises(helm.HelmRenderError, match="refresh_token_file"):
        render(merge(merge(merge(MINIMAL, REFRESH), several), read_only))
    # Opting in: the file on a volume the replicas share and can write.
    docs = render(merge(merge(merge(MINIMAL, REFRESH), several), SHARED))
    assert "refresh_token_file" in one(docs, "ConfigMap")["data"]["config.toml"]
    # A PAT (preferred) with several replicas is fine, and so is a refresh token on one.
    render(merge(MINIMAL, several))
    render(merge(MINIMAL, REFRESH))
    # An existing Secret said to hold a refresh token: the same rule. (Its file on the Secret's
    # read-only mount is no shared writable file.)
    existing = merge({k: v for k, v in MINIMAL.items() if k != "secrets"},
                     {"existingSecret": "creds", "existingSecretContents": {"gotoToken": "refreshToken"}})
    with pytest.raises(helm.HelmRenderError, match="personal access token"):
        render(merge(existing, several))
    docs = render(merge(merge(existing, several), SHARED))
    assert "/var/lib/callbridge/token/refresh-token" in one(docs, "ConfigMap")["data"]["config.toml"]
    render(merge(merge(existing, several), {"existingSecretContents": {"gotoToken": "personalAccessToken"}}))
    render(existing)


@pytest.mark.parametrize("timeout,grace,ok", [
    ("25s", 60, True),
    ("59s", 60, True),
    ("60s", 60, False),
    ("1m", 60, False),
    ("90000ms", 60, False),
    ("59999ms", 60, True),
    ("1m30s", 60, False),
    ("1m 30s", 120, True),
    ("2 min", 60, False),
    ("500ms", 1, True),
    ("1h", 3599, False),
    ("30 seconds", 31, True),
])
def test_shutdown_timeout_must_stay_below_the_grace_period(timeout, grace, ok):
    values = merge(MINIMAL, {"config": {"shutdown": {"timeout": timeout}},
                             "terminationGracePeriodSeconds": grace})
    if ok:
        render(values)
    else:
        with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
            render(values)


# The schema already refuses "25", "1m30", "-5s"; these pass it with units humantime lacks.
@pytest.mark.parametrize("timeout", ["25 parsecs", "5 fortnights", "1mo"])
def test_shutdown_timeout_the_chart_cannot_read_is_refused(timeout):
    with pytest.raises(helm.HelmRenderError, match="not a duration the chart can read"):
        render(merge(MINIMAL, {"config": {"shutdown": {"timeout": timeout}}}))


def test_replicas_spread_over_nodes_by_default():
    pod = one(render(MINIMAL), "Deployment")["spec"]["template"]["spec"]
    keys = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert set(keys) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for c in keys.values():
        assert c["whenUnsatisfiable"] == "ScheduleAnyway"  # soft: one node still runs them all
        assert c["labelSelector"]["matchLabels"] == one(render(MINIMAL), "Deployment")["spec"]["selector"]["matchLabels"]
    own = [{"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "x"}}}]
    pod = one(render(merge(MINIMAL, {"topologySpreadConstraints": own})), "Deployment")["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"] == own
    pod = one(render(merge(MINIMAL, {"defaultTopologySpread": False})), "Deployment")["spec"]["template"]["spec"]
    assert "topologySpreadConstraints" not in pod


def promql_pod_regex(expr: str) -> re.Pattern:
    """The pod=~"..." matcher of an expression (PromQL regexes are fully anchored)."""
    return re.compile(re.search(r'pod=~"([^"]+)"', expr).group(1))


def test_not_ready_alert_counts_only_running_pods_of_this_release():
    rules = {r["alert"]: r for g in one(render(merge(MINIMAL, {"prometheusRule": {"enabled": True}})),
                                          "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    expr = rules["CallbridgeNotReady"]["expr"]
    # An evicted or Failed pod stays not ready until it is garbage-collected: not an outage.
    assert 'and on (namespace, pod) (kube_pod_status_phase{phase="Running"} == 1)' in expr
    pods = promql_pod_regex(expr)
    for name in ["callbridge-7d9f8b6c4-x2x9z", "callbridge-5b7c9d8f6b-qwzx4"]:
        assert pods.fullmatch(name), name
    for name in ["callbridge-sim-7d9f8b6c4-x2x9z", "callbridge-db-0", "callbridge-admin-6c8b9-abcde",
                 "callbridge-7d9f8b6c4-x2x9z-debug", "other-7d9f8b6c4-x2x9z"]:
        assert not pods.fullmatch(name), name
    # The sequencer is no longer part of pod readiness: its own alert.
    assert "callbridge_sequencer_in_group" in rules["CallbridgeSequencerNotInGroup"]["expr"]
