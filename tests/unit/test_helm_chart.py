"""The Helm chart, rendered by Helm's own engine (helm-python-sdk) and every manifest validated against
the Kubernetes schemas (kubernetes-validate, strict: unknown fields are errors)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from gateway.cli import write_client_keys
from gateway.policy.loader import load_policies
from tests.support.servers import REPO

CHART = REPO / "helm" / "jamu"
KUBE = "1.30.0"  # the oldest version the chart supports (preStop sleep action)


@pytest.fixture(scope="module")
def demo_policies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """The demo policy set with freshly made client keys, as chart values."""
    root = tmp_path_factory.mktemp("policies")
    shutil.copytree(REPO / "policies", root / "policies", ignore=shutil.ignore_patterns("keys"))
    (root / "policies" / "keys").mkdir()
    for path in sorted((root / "policies").glob("*.yaml")):
        for client in yaml.safe_load(path.read_text())["clients"]:
            write_client_keys(client["client_id"], root / "private", root / "policies" / client["jwks_file"])
    files = {p.name: p.read_text() for p in (root / "policies").glob("*.yaml")}
    keys = {p.name: p.read_text() for p in (root / "policies" / "keys").glob("*.json")}
    return {"files": files, "keys": keys}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = helm.Chart.load(CHART).render(values, name="jamu", namespace="identity", is_install=True)
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}


@pytest.mark.slow
def test_every_manifest_is_valid_kubernetes(demo_policies: dict) -> None:
    docs = render({"policies": demo_policies})
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == [
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE, strict=True)
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
    report = helm.lint(CHART, {"policies": demo_policies}, strict=True)
    assert report["errors"] == [] and all(m["severity"] < 2 for m in report["messages"]), report


def test_the_pod_runs_locked_down_and_drains(demo_policies: dict) -> None:
    deployment = by_kind(render({"policies": demo_policies}))["StatefulSet"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == 5
    assert pod["terminationGracePeriodSeconds"] > 5 + 20  # the sleep, then uvicorn's graceful drain
    assert deployment["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/jamu", "/tmp"}


def test_secrets_are_referenced_never_embedded(demo_policies: dict) -> None:
    docs = render(
        {
            "policies": demo_policies,
            "secrets": {
                "signingKey": {"name": "sig", "key": "k.pem"},
                "subjectKey": {"name": "sub", "key": "k"},
                "consoleKey": {"name": "con", "key": "c"},
                "pseudonymKey": {"name": "pse", "key": "k"},
                "checkpointKey": {"name": "chk", "key": "c.pem"},
                "databaseUrl": {"name": "db", "key": "url"},
                "redisUrl": {"name": "redis", "key": "url"},
            },
        }
    )
    assert "Secret" not in {doc["kind"] for doc in docs}
    container = by_kind(docs)["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["GATEWAY_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "url"}
    assert env["GATEWAY_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "url"}
    assert env["GATEWAY_SIGNING_KEY_FILE"]["value"] == "/etc/jamu/secrets/signing/k.pem"
    volumes = {v["name"]: v for v in by_kind(docs)["StatefulSet"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["checkpoint-key"]["secret"] == {"secretName": "chk", "defaultMode": 0o400}
    assert volumes["console-key"]["secret"] == {"secretName": "con", "defaultMode": 0o400}
    assert env["GATEWAY_CONSOLE_KEY_FILE"]["value"] == "/etc/jamu/secrets/console/c"  # one key for every replica
    assert env["GATEWAY_REPLICAS"]["value"] == "6"  # local fallback limits divide by the most replicas


def test_the_mounted_policies_load_as_the_gateway_reads_them(demo_policies: dict, tmp_path: Path) -> None:
    docs = render({"policies": demo_policies})
    data = by_kind(docs)["ConfigMap"]["data"]
    pod = by_kind(docs)["StatefulSet"]["spec"]["template"]["spec"]
    items = next(v for v in pod["volumes"] if v["name"] == "policies")["configMap"]["items"]
    for item in items:  # what the kubelet writes into /etc/jamu/policies
        target = tmp_path / item["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[item["key"]])
    loaded = load_policies(tmp_path)
    assert set(loaded.administrations) == {"apdp", "canam", "cec-bamako-c3", "ceni", "dnds"}
    annotations = pod and by_kind(docs)["StatefulSet"]["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/policies"]) == 64  # a policy change rolls the pods


def test_options(demo_policies: dict) -> None:
    docs = render(
        {
            "policies": demo_policies,
            "autoscaling": {"enabled": False},
            "replicaCount": 3,
            "podMonitor": {"enabled": True},
            "networkPolicy": {"enabled": False},
            "telemetry": {"otlpEndpoint": "http://otel-collector:4318"},
            "connectors": "connectors: []",
            "witnesses": "quorum: 1\nwitnesses: []\n",
            "console": {
                "alerts": "enumeration: {min_checks: 30}\n",
                "oidc": {
                    "issuer": "https://idp.example.ml/realms/jamu",
                    "clientId": "jamu-console",
                    "clientSecret": {"name": "jamu-console-oidc", "key": "secret"},
                },
            },
        }
    )
    kinds = by_kind(docs)
    assert "HorizontalPodAutoscaler" not in kinds and "NetworkPolicy" not in kinds
    assert kinds["StatefulSet"]["spec"]["replicas"] == 3
    assert kinds["PodMonitor"]["spec"]["podMetricsEndpoints"][0] == {
        "port": "metrics",
        "path": "/metrics",
        "interval": "30s",
    }
    env = {e["name"]: e.get("value") for e in kinds["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
    assert env["GATEWAY_CONNECTORS_FILE"] == "/etc/jamu/config/connectors.yaml" and env["GATEWAY_REPLICAS"] == "3"
    assert env["GATEWAY_WITNESSES_FILE"] == "/etc/jamu/config/witnesses.yaml"
    assert env["GATEWAY_ALERTS_FILE"] == "/etc/jamu/config/alerts.yaml"
    assert env["GATEWAY_CONSOLE_OIDC_ISSUER"] == "https://idp.example.ml/realms/jamu"
    assert env["GATEWAY_CONSOLE_OIDC_CLIENT_ID"] == "jamu-console" and env["GATEWAY_CONSOLE_OIDC_LOGIN_CLAIM"] == "sub"
    container = kinds["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    secret = next(e for e in container["env"] if e["name"] == "GATEWAY_CONSOLE_OIDC_CLIENT_SECRET")
    assert secret["valueFrom"]["secretKeyRef"] == {"name": "jamu-console-oidc", "key": "secret"}
    data = kinds["ConfigMap"]["data"]
    assert data["witnesses.yaml"] == "quorum: 1\nwitnesses: []\n" and data["alerts.yaml"].startswith("enumeration")
    volumes = {v["name"]: v for v in kinds["StatefulSet"]["spec"]["template"]["spec"]["volumes"]}
    config = volumes["config"]["configMap"]["items"]
    for name in ("connectors.yaml", "witnesses.yaml", "alerts.yaml"):  # beside the policies, not among them
        assert {"key": name, "path": name} in config
        assert all(item["key"] != name for item in volumes["policies"]["configMap"]["items"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == "/etc/jamu/config" and mounts["policies"] == "/etc/jamu/policies"


@pytest.mark.parametrize(
    "values, where",
    [
        ({"issuer": "http://jamu.example.ml"}, "issuer"),
        ({"replicaCount": "two"}, "replicaCount"),
        ({"secrets": {"signingKey": {"name": "Not A Name!"}}}, "secrets"),
        ({"logFormat": "xml"}, "logFormat"),
        ({"policies": {"files": {"../escape.yaml": "x"}}}, "escape.yaml"),
        ({"surprise": True}, "surprise"),
        ({"console": {"oidc": {"issuer": "http://idp.example.ml"}}}, "issuer"),
        ({"console": {"oidc": {"roleClaim": "role claim!"}}}, "roleClaim"),
    ],
)
def test_bad_values_are_refused_by_the_schema(values: dict, where: str) -> None:
    with pytest.raises(helm.HelmError) as caught:
        helm.Chart.load(CHART).render(values, name="jamu", namespace="identity")
    assert where in str(caught.value)


def test_metrics_are_scraped_from_a_port_no_service_exposes(demo_policies: dict) -> None:
    docs = render(
        {
            "policies": demo_policies,
            "trustedProxies": ["10.0.0.0/8", "fd00::/8"],
            "networkPolicy": {
                "scrapeFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
            },
        }
    )
    kinds = by_kind(docs)
    container = kinds["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["GATEWAY_METRICS_PORT"], env["GATEWAY_METRICS_HOST"]) == ("9100", "0.0.0.0")
    assert env["GATEWAY_TRUSTED_PROXIES"] == "10.0.0.0/8,fd00::/8"
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
    service_ports = kinds["Service"]["spec"]["ports"]
    assert [p["targetPort"] for p in service_ports] == ["http"]  # the client Service: no metrics port
    ingress = kinds["NetworkPolicy"]["spec"]["ingress"]
    scrape = [rule for rule in ingress if rule["ports"] == [{"port": 9100, "protocol": "TCP"}]]
    assert len(scrape) == 1 and scrape[0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    assert all({"port": 9100, "protocol": "TCP"} not in rule["ports"] for rule in ingress if rule not in scrape)


def test_each_replica_keeps_its_own_log_on_a_volume_of_its_own(demo_policies: dict) -> None:
    docs = render({"policies": demo_policies, "accessLog": {"storage": "50Gi", "storageClassName": "fast"}})
    statefulset = by_kind(docs)["StatefulSet"]
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["storageClassName"] == "fast"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    pod = statefulset["spec"]["template"]["spec"]
    assert "data" not in {v["name"] for v in pod["volumes"]}  # the claim, not an emptyDir
    [container] = pod["containers"]
    assert {"name": "data", "mountPath": "/var/lib/jamu"} in container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "GATEWAY_LOG_ORIGIN" not in env  # the default origin carries the pod's stable name
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert services[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    hpa = by_kind(docs)["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
