"""The Helm chart: lint, schema, Kubernetes validity, the rendered config against the real
binary, security facts and secret hygiene, for every supported value set."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

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
    ({"replicaCount": "2"}, "replicaCount"),
    ({"config": {"goto": {"unknown_key": "x"}}}, "unknown_key"),
])
def test_schema_refuses_wrong_types_and_unknown_keys(bad, where):
    with pytest.raises(helm.HelmValuesError, match=where):
        render(merge(MINIMAL, bad))


def test_websocket_runs_several_replicas_and_refuses_ingress():
    ws = VALUE_SETS["websocket"]
    docs = render(merge(ws, {"replicaCount": 3}))
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
    assert kinds(rendered["sasl-tls"]) == base | {"Secret"}


def test_service_monitor_shape(rendered):
    docs = rendered["webhook-full"]
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    assert sm["metadata"]["labels"]["release"] == "prom"
    sel = sm["spec"]["selector"]["matchLabels"]
    assert sel and all(svc["metadata"]["labels"].get(k) == v for k, v in sel.items())
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

def env_for(docs: list[dict], values: dict) -> dict[str, str]:
    """The CALLBRIDGE_* variables the Deployment would set: secret refs resolved against the
    chart-made Secret (absent optional keys stay unset), dummies for an existing Secret."""
    made = secret_data(docs) if not values.get("existingSecret") else None
    env = {}
    for e in container(docs).get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
            continue
        ref = e["valueFrom"]["secretKeyRef"]
        if made is None:
            env[e["name"]] = "dummy-" + "x" * 40
        elif ref["key"] in made:
            env[e["name"]] = made[ref["key"]]
        else:
            assert ref.get("optional") is True, f"{e['name']} refers to missing key {ref['key']}"
    return env


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
    binary = callbridge_binary()
    assert binary.exists(), f"{binary} missing: run cargo build"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    env.update(env_for(docs, VALUE_SETS[name]))
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.toml")
        with open(path, "w") as f:
            f.write(cm["data"]["config.toml"])
        out = subprocess.run([str(binary), "check-config", "--config", path], env=env,
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_check_config_catches_a_broken_render():
    """The check above can fail: without the webhook secret the binary refuses the config."""
    docs = render(VALUE_SETS["defaults"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    env.update({k: v for k, v in env_for(docs, VALUE_SETS["defaults"]).items()
                if k != "CALLBRIDGE_WEBHOOK__SECRET"})
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.toml")
        with open(path, "w") as f:
            f.write(one(docs, "ConfigMap")["data"]["config.toml"])
        out = subprocess.run([str(callbridge_binary()), "check-config", "--config", path], env=env,
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 64 and "webhook.secret" in out.stdout + out.stderr


def test_config_values_reach_the_toml(rendered):
    toml = one(rendered["sasl-tls"], "ConfigMap")["data"]["config.toml"]
    assert 'security_protocol = "sasl_ssl"' in toml
    assert 'mechanism = "SCRAM-SHA-512"' in toml
    assert '"compression.type" = "lz4"' in toml
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


@pytest.mark.parametrize("name", SETS)
def test_secret_env_vars(rendered, name):
    docs = rendered[name]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container(docs)["env"] if "valueFrom" in e}
    want_secret = VALUE_SETS[name].get("existingSecret") or RELEASE
    assert {r["name"] for r in env.values()} == {want_secret}
    assert env["CALLBRIDGE_GOTO__CLIENT_SECRET"].get("optional") is not True
    assert env["CALLBRIDGE_GOTO__PERSONAL_ACCESS_TOKEN"]["optional"] is True
    assert env["CALLBRIDGE_GOTO__REFRESH_TOKEN"]["optional"] is True
    webhook = VALUE_SETS[name]["config"].get("channel", {}).get("kind", "webhook") == "webhook"
    assert ("CALLBRIDGE_WEBHOOK__SECRET" in env) == webhook
    sasl = name == "sasl-tls"
    assert env["CALLBRIDGE_KAFKA__SASL__PASSWORD"]["optional"] is (not sasl)
    if name == "existing-secret":
        assert env["CALLBRIDGE_GOTO__CLIENT_SECRET"]["key"] == "client-secret"


# --- workload shape ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", SETS)
def test_probes_ports_and_service(rendered, name):
    docs = rendered[name]
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert ports["admin"] == 9090
    svc = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert svc["admin"]["port"] == 9090 and svc["admin"]["targetPort"] == "admin"
    if VALUE_SETS[name]["config"].get("channel", {}).get("kind") == "websocket":
        assert "webhook" not in ports and "webhook" not in svc
        assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    else:
        assert ports["webhook"] == 8080
        assert svc["webhook"]["port"] == 8080 and svc["webhook"]["targetPort"] == "webhook"
        assert one(docs, "Service")["spec"]["publishNotReadyAddresses"] is True
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
    assert pdb == {"minAvailable": 1, "selector": full["selector"]}


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
    assert "WebSocket mode" in notes(VALUE_SETS["websocket"])


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
