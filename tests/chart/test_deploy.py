"""deploy/: the kustomize base, the Prometheus rule file, the Grafana dashboard and the
Dockerfile (which cannot be built here, so only its load-bearing lines are checked)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile

import kubernetes_validate
import pytest
import yaml

from conftest import DEPLOY, REPO, VALUE_SETS, callbridge_binary, container, one, render

OPERATIONS = (REPO / "docs" / "operations.md").read_text()
# Every metric of the operations guide's table.
DOC_METRICS = sorted(set(re.findall(r"^\| `(callbridge_[a-z_]+)", OPERATIONS, re.M)))
# Metrics the alerts or the dashboard may use before docs/operations.md lists them.
PLANNED: set[str] = set()


def test_operations_guide_table_was_read():
    assert len(DOC_METRICS) >= 20 and "callbridge_gap_oldest_age_seconds" in DOC_METRICS


# --- kustomize base ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kustomized() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed for `kubectl kustomize deploy/kubernetes`")
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "kubernetes")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_kustomize_output_validates(kustomized, version):
    assert {d["kind"] for d in kustomized} == {
        "ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget"}
    for doc in kustomized:
        assert "namespace" not in doc["metadata"], "the base must stay namespace-less"
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomize_config_passes_check_config(kustomized):
    cm = one(kustomized, "ConfigMap")
    c = container(kustomized)
    vol = next(v for v in one(kustomized, "Deployment")["spec"]["template"]["spec"]["volumes"]
               if v["name"] == "config")
    assert vol["configMap"]["name"] == cm["metadata"]["name"]  # generator hash rewired
    assert not c.get("env"), "secrets are mounted files, not environment variables"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "secrets")
    secrets = next(v for v in one(kustomized, "Deployment")["spec"]["template"]["spec"]["volumes"]
                   if v["name"] == "secrets")
    toml = cm["data"]["config.toml"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBRIDGE_")}
    with tempfile.TemporaryDirectory() as d:
        # What the kubelet would put in the volume: every item of the Secret the base names.
        for item in secrets["secret"]["items"]:
            with open(os.path.join(d, item["path"]), "w") as f:
                f.write("dummy-" + "x" * 40)
        path = os.path.join(d, "config.toml")
        with open(path, "w") as f:
            f.write(toml.replace(mount["mountPath"] + "/", d + "/"))
        out = subprocess.run([str(callbridge_binary()), "check-config", "--config", path],
                             env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_kustomize_base_matches_chart_defaults(kustomized):
    chart = render(VALUE_SETS["defaults"])
    k_pod = one(kustomized, "Deployment")["spec"]["template"]["spec"]
    c_pod = one(chart, "Deployment")["spec"]["template"]["spec"]
    for key in ["securityContext", "enableServiceLinks", "terminationGracePeriodSeconds",
                "automountServiceAccountToken"]:
        assert k_pod[key] == c_pod[key], key
    kc, cc = k_pod["containers"][0], c_pod["containers"][0]
    for key in ["args", "ports", "livenessProbe", "readinessProbe", "resources", "securityContext",
                "volumeMounts"]:
        assert kc[key] == cc[key], key
    # Secrets are files of the mounted Secret in both, never environment variables.
    assert not kc.get("env") and not cc.get("env")
    # The same volumes, but for the ConfigMap's name (kustomize adds a hash).
    unnamed = lambda vols: [{**v, "configMap": {}} if "configMap" in v else v for v in vols]
    assert unnamed(k_pod["volumes"]) == unnamed(c_pod["volumes"])
    svcs = lambda docs: {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Service"}
    assert svcs(kustomized) == svcs(chart)
    assert k_pod["topologySpreadConstraints"] == c_pod["topologySpreadConstraints"]
    assert one(kustomized, "PodDisruptionBudget")["spec"] == one(chart, "PodDisruptionBudget")["spec"]
    # Same config apart from the placeholders the user must replace.
    k_toml = one(kustomized, "ConfigMap")["data"]["config.toml"]
    c_toml = one(chart, "ConfigMap")["data"]["config.toml"]
    body = lambda t: [l for l in t.splitlines()
                      if l and not l.startswith("#")
                      and not l.startswith(("client_id", "public_url", "bootstrap_servers"))]
    assert body(k_toml) == body(c_toml)


# --- alerts ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alerts() -> dict[str, dict]:
    with open(DEPLOY / "alerts.yaml") as f:
        doc = yaml.safe_load(f)
    assert list(doc) == ["groups"]
    rules = {}
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            if "for" in rule:
                assert re.fullmatch(r"[0-9]+(ms|s|m|h)", rule["for"])
            assert rule["expr"].count("(") == rule["expr"].count(")")
            assert rule["alert"] not in rules, "duplicate alert name"
            rules[rule["alert"]] = rule
    return rules


def test_alerts_cover_the_issue(alerts):
    exprs = {name: r["expr"] for name, r in alerts.items()}
    want = [
        r"callbridge_gap_oldest_age_seconds\) > 240$",
        r'rate\(callbridge_gap_records_published_total\{reason="backfill_failed"\}\[15m\]\)\) > 0$',
        r"rate\(callbridge_backfill_failures_total\[5m\]\)",
        r"rate\(callbridge_channel_reconnects_total\[5m\]\)",
        r"kube_pod_status_ready",
        r"callbridge_raw_consumer_lag",
        r"rate\(callbridge_dead_letter_records_total\[15m\]\)\) > 0 or ",
        r"rate\(callbridge_sequencer_dead_letters_total\[15m\]\)\) > 0$",
        r'callbridge_webhook_responses_total\{status="503"\}',
    ]
    for pattern in want:
        assert any(re.search(pattern, e) for e in exprs.values()), pattern


def test_chart_readme_names_every_alert(alerts):
    readme = (REPO / "helm" / "callbridge" / "README.md").read_text()
    missing = [name for name in alerts if not re.search(rf"\b{name}\b", readme)]
    assert missing == [], f"helm/callbridge/README.md does not list {missing}"


def test_alerts_use_only_known_metrics(alerts):
    for r in alerts.values():
        for metric in re.findall(r"\b(callbridge_[a-z_]+)", r["expr"]):
            assert metric in DOC_METRICS or metric in PLANNED, metric


# --- dashboard ---------------------------------------------------------------------------------

def test_dashboard_covers_every_documented_metric():
    with open(DEPLOY / "grafana-dashboard.json") as f:
        dash = json.load(f)
    assert dash["title"] and dash["uid"] and dash["schemaVersion"] >= 30
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    for p in panels:
        assert p["targets"] and p["datasource"]["uid"] == "${datasource}"
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
    used = {m for e in exprs for m in re.findall(r"\b(callbridge_[a-z_]+?)(?:_sum|_count|_bucket)?\b", e)}
    missing = [m for m in DOC_METRICS if m not in used]
    assert missing == [], f"no panel for {missing}"
    unknown = used - set(DOC_METRICS) - PLANNED
    assert unknown == set(), unknown
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "namespace", "pod"} <= names
    assert all('namespace=~"$namespace"' in e for e in exprs)


# --- Dockerfile (read, not built: no Docker here) ----------------------------------------------

def test_dockerfile_essentials():
    text = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms[0] == "rust:1-bookworm" and froms[-1] in {
        "debian:bookworm-slim", "gcr.io/distroless/cc-debian12:nonroot"}
    assert "cargo build --release --locked" in text
    runtime = text.split("AS runtime", 1)[1]
    for pkg in ["libssl3", "zlib1g", "ca-certificates"]:
        assert pkg in runtime, pkg
    user = re.findall(r"^USER (\S+)", runtime, re.M)
    assert user and not user[-1].startswith(("0", "root"))
    # The chart's securityContext runs as 10001: keep the image's user the same.
    with open(REPO / "helm" / "callbridge" / "values.yaml") as f:
        uid = yaml.safe_load(f)["securityContext"]["runAsUser"]
    assert user[-1].split(":")[0] == str(uid)
    assert "CALLBRIDGE_CONFIG" not in re.sub(r"^#.*$", "", text, flags=re.M)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert "target/" in ignore
    assert "**/target/" in ignore  # fuzz/target, benches' and tools' own target dirs
    # librdkafka is built by rdkafka-sys with its own configure script unless the cmake-build
    # feature is on; nothing else in Cargo.lock needs cmake.
    cargo = (REPO / "Cargo.toml").read_text()
    if "cmake-build" not in cargo and 'name = "cmake"' not in (REPO / "Cargo.lock").read_text():
        build = text.split("AS runtime", 1)[0]
        assert not re.search(r"\bcmake\b", re.sub(r"^#.*$", "", build, flags=re.M)), "cmake is unused"
