"""Shared fixtures of the chart tests: the chart, the value sets and rendering helpers.

The value sets are the deployments the chart promises to support; every test that loops over
them renders the chart with the real Helm engine (helm-python-sdk) and parses the result.
"""

from __future__ import annotations

import base64
import copy
import os
import pathlib

import helm_python as helm
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "callbridge"
DEPLOY = REPO / "deploy"
RELEASE = "callbridge"
NAMESPACE = "bridge"

# Distinctive secret values: tests look for them where they must (Secret) and must not
# (ConfigMap, Deployment) appear.
SECRETS = {
    "gotoClientSecret": "client-secret-7f3a9c1e",
    "gotoPersonalAccessToken": "pat-token-5b2d8e4f",
    "webhookSecret": "webhook-path-secret-0123456789abcdef0123",
}

MINIMAL = {
    "config": {
        "goto": {"client_id": "client-id-1", "account_keys": ["1234567890123456789"]},
        "webhook": {"public_url": "https://callbridge.example.com/goto/webhook"},
        "kafka": {"bootstrap_servers": "kafka-0.kafka:9092,kafka-1.kafka:9092"},
    },
    "secrets": dict(SECRETS),
}


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


VALUE_SETS = {
    # The chart's defaults plus only what has no default (client id, account, URL, secrets).
    "defaults": MINIMAL,
    # Webhook mode with every optional object on.
    "webhook-full": merge(
        MINIMAL,
        {
            "replicaCount": 3,
            "terminationGracePeriodSeconds": 77,
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "host": "callbridge.example.com",
                "tls": [{"secretName": "callbridge-tls", "hosts": ["callbridge.example.com"]}],
            },
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "prometheusRule": {"enabled": True},
            "networkPolicy": {
                "enabled": True,
                "webhookFrom": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
                ],
                "kafka": {"ports": [9094], "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
            },
            "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5,
                            "targetMemoryUtilizationPercentage": 80},
            "podDisruptionBudget": {"enabled": True, "minAvailable": 1},
        },
    ),
    # WebSocket mode: no webhook port, no webhook secret.
    "websocket": merge(
        {k: v for k, v in MINIMAL.items() if k != "secrets"},
        {
            "config": {"channel": {"kind": "websocket"}, "webhook": {"public_url": ""}},
            "secrets": {"gotoClientSecret": SECRETS["gotoClientSecret"],
                        "gotoRefreshToken": "refresh-token-9e8d7c6b"},
        },
    ),
    # Secrets managed outside the chart.
    "existing-secret": merge(
        {k: v for k, v in MINIMAL.items() if k != "secrets"},
        {"existingSecret": "callbridge-credentials",
         "secretKeys": {"gotoClientSecret": "client-secret"}},
    ),
    # An existing Secret with every key renamed, holding a refresh token (one replica) and the
    # password of an encrypted Kafka client key: SASL and mutual TLS.
    "existing-secret-custom": merge(
        {k: v for k, v in MINIMAL.items() if k != "secrets"},
        {
            "existingSecret": "bridge-credentials",
            "existingSecretContents": {"gotoToken": "refreshToken", "kafkaTlsKeyPassword": True},
            "secretKeys": {
                "gotoClientSecret": "oauth-client-secret",
                "gotoPersonalAccessToken": "oauth-pat",
                "gotoRefreshToken": "oauth-refresh-token",
                "webhookSecret": "path-secret",
                "kafkaSaslPassword": "sasl-pass",
                "kafkaTlsKeyPassword": "client-key-pass",
            },
            "config": {
                "kafka": {
                    "bootstrap_servers": "kafka.example.com:9093",
                    "security_protocol": "sasl_ssl",
                    "sasl": {"mechanism": "PLAIN", "username": "callbridge"},
                    "tls": {"certificate_location": "/etc/callbridge/kafka-tls/tls.crt",
                            "key_location": "/etc/callbridge/kafka-tls/tls.key"},
                }
            },
            "kafkaTls": {"enabled": True, "secretName": "kafka-client"},
        },
    ),
    # Kafka with SASL over TLS, the CA mounted from a Secret, librdkafka pass-through.
    "sasl-tls": merge(
        MINIMAL,
        {
            "config": {
                "kafka": {
                    "bootstrap_servers": "kafka.example.com:9093",
                    "security_protocol": "sasl_ssl",
                    "sasl": {"mechanism": "SCRAM-SHA-512", "username": "callbridge"},
                    "tls": {"ca_location": "/etc/callbridge/kafka-tls/ca.crt"},
                    "topics": {"other_sources": "callbridge.other", "replication_factor": -1},
                    "librdkafka": {"compression.type": "lz4", "linger.ms": 5, "socket.nagle.disable": True},
                }
            },
            "secrets": {"kafkaSaslPassword": "sasl-password-3c4d5e6f"},
            "kafkaTls": {"enabled": True, "secretName": "kafka-ca"},
        },
    ),
}


def render(values: dict | None, name: str = RELEASE) -> list[dict]:
    """Renders the chart; returns every manifest as a dict (NOTES.txt and empty files left out)."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values=values, name=name, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__file__", path)
                docs.append(doc)
    return docs


def notes(values: dict) -> str:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(v for k, v in files.items() if k.endswith("NOTES.txt"))


def strip(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "__file__"}


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def kinds(docs: list[dict]) -> set[str]:
    return {d["kind"] for d in docs}


def container(docs: list[dict]) -> dict:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    return pod["containers"][0]


def secret_data(docs: list[dict]) -> dict[str, str]:
    s = one(docs, "Secret")
    return {k: base64.b64decode(v).decode() for k, v in s.get("data", {}).items()}


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    return {name: render(values) for name, values in VALUE_SETS.items()}


def callbridge_binary() -> pathlib.Path:
    return pathlib.Path(os.environ.get("CALLBRIDGE_BIN", REPO / "target" / "debug" / "callbridge"))
