"""The deployment artifacts: Kubernetes manifests valid for the current API, and in
agreement with the relay.toml they ship (ports, probe paths, drain timing); the
Dockerfile's key lines in agreement with the config's defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from support import needs_test_extra
from wsrelay.config import (DEFAULT_ADMIN_PORT, DEFAULT_PORT, auth_secret_from_env, parse_config,
                            require_signing_key)

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def _documents() -> dict[str, dict]:
    docs = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_the_manifests_are_all_there():
    assert {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "Ingress"} <= set(_documents())


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_every_manifest_is_valid_for_the_current_kubernetes_api(path):
    needs_test_extra("kubernetes_validate")
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version
    version = latest_version()
    assert tuple(int(x) for x in version.split(".")[:2]) >= (1, 31)
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, version, strict=True)     # raises on any unknown or wrong field


def test_kubernetes_validate_does_refuse_a_wrong_manifest():
    needs_test_extra("kubernetes_validate")
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version
    doc = _documents()["Deployment"]
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [9100]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, latest_version(), strict=True)


def _relay_toml():
    docs = _documents()
    config = parse_config(docs["ConfigMap"]["data"]["relay.toml"], source="configmap.yaml")
    secret_env = docs["Secret"]["stringData"]
    return docs, auth_secret_from_env(config, secret_env)


def _container(docs):
    return docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def test_the_shipped_config_is_valid_with_the_secret():
    _, config = _relay_toml()
    require_signing_key(config)                       # token agents get their key from the Secret
    assert config.fleet.enabled and config.agents


def test_ports_and_probes_agree_with_the_config():
    docs, config = _relay_toml()
    container = _container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"ws": config.relay.port, "admin": config.relay.admin_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    service_port = docs["Service"]["spec"]["ports"]
    assert [p["targetPort"] for p in service_port] == ["ws"]          # the admin port is not public
    annotations = docs["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.relay.admin_port)
    assert config.relay.host == "0.0.0.0"                            # probes come from the kubelet


def test_the_config_file_is_mounted_where_the_command_reads_it():
    docs, _ = _relay_toml()
    container = _container(docs)
    config_path = container["args"][container["args"].index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert config_path == f"{mount['mountPath']}/relay.toml"
    volume = next(v for v in docs["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env["WSRELAY_AUTH_SECRET"] == {"name": docs["Secret"]["metadata"]["name"], "key": "WSRELAY_AUTH_SECRET"}


def test_a_rollout_drains_live_calls_before_the_pod_is_killed():
    docs, config = _relay_toml()
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    pre_stop = _container(docs)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = int(pre_stop[1]) + config.relay.drain_seconds + config.relay.close_timeout
    assert spec["terminationGracePeriodSeconds"] > needed
    assert docs["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_selectors_and_targets_name_the_relays():
    docs, _ = _relay_toml()
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", docs["Deployment"]["metadata"]["name"])
    backend = docs["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": docs["Service"]["metadata"]["name"], "port": {"name": "ws"}}


def test_the_ingress_idle_timeout_is_above_the_longest_session():
    docs, config = _relay_toml()
    annotations = docs["Ingress"]["metadata"]["annotations"]
    longest = max(a.max_session_seconds for a in config.agents)
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{key}"]) > longest


def test_the_dockerfile_builds_a_wheel_and_runs_non_root_with_a_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build"
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.M)           # tests/test_image.py: the stand-in
    assert base and base.group(1).endswith("-slim")
    assert all(image == "${BASE_IMAGE}" for image, _ in stages)
    assert "pip wheel" in text and "COPY --from=build /wheels" in text
    user = re.search(r"^USER\s+(\S+)", text, re.M)
    assert user and user.group(1).split(":")[0] not in ("root", "0")
    docs, config = _relay_toml()
    uid = docs["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert user.group(1).split(":")[0] == str(uid)
    health = re.search(r"^HEALTHCHECK .*?CMD (.*?)$", text, re.M | re.S)
    assert health and f"127.0.0.1:{DEFAULT_ADMIN_PORT}/healthz" in text
    assert DEFAULT_ADMIN_PORT == config.relay.admin_port
    assert re.search(rf"^EXPOSE\s+{DEFAULT_PORT}\s+{DEFAULT_ADMIN_PORT}\s*$", text, re.M)
    assert 'ENTRYPOINT ["wsrelay"]' in text
    assert 'CMD ["serve", "--config", "/etc/wsrelay/relay.toml"]' in text
    assert _container(docs)["args"] == ["serve", "--config", "/etc/wsrelay/relay.toml"]
    for copied in re.findall(r"^COPY (?!--from)(.+?) \S+$", text, re.M):
        for name in copied.split():
            assert (ROOT / name).exists(), f"the Dockerfile copies {name}, which is not in the repository"
