"""The Helm chart, rendered by Helm's own Go SDK (helm-python-sdk, offline) in every mode:
lint clean, core manifests valid against the Kubernetes schemas kubernetes-validate ships, the
ServiceMonitor wired to the pod, security defaults and probes, and the store rules."""

from __future__ import annotations

import hashlib
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from dcr_sidecar.config import parse_settings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "dcr-sidecar"
EXAMPLE = ROOT / "charts" / "examples" / "app-with-sidecar"
MIN_KUBE = "1.25.0"  # Chart.yaml kubeVersion
NATIVE_KUBE = "1.29.0"  # native sidecars: init containers with restartPolicy: Always
LATEST_KUBE = kubernetes_validate.latest_version() + ".0"
CORE_KINDS = {"Deployment", "Service", "ConfigMap", "Ingress"}
REDIS = {"replicaCount": 3, "store": {"backend": "redis",
                                      "redis": {"existingSecret": "dcr-redis"}}}
MODES: dict[str, dict[str, Any]] = {
    "default": {},
    "native-sidecar": {"nativeSidecar": True},
    "metrics": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"team": "id"}}}},
    "monitoring": {"metrics": {"prometheusRule": {"enabled": True},
                               "grafanaDashboard": {"enabled": True}}},
    "redis-replicas": REDIS,
    "secrets-pvc": {"existingSecret": "oauth-secrets", "store": {"file": {
        "existingClaim": "dcr-state"}}, "config": {"sidecar": {"admin": {
            "token": {"file": "/etc/dcr-sidecar/secrets/admin-token"}}}}},
    "existing-configmap": {"config": {"existingConfigMap": "my-sidecar-config"}},
    "front-ingress": {
        "front": {"enabled": True, "publicBaseUrl": "https://app.example.com",
                  "tls": {"existingSecret": "app-front-tls"}},
        "ingress": {"enabled": True, "className": "nginx", "hosts": ["app.example.com"],
                    "tls": [{"secretName": "app-tls", "hosts": ["app.example.com"]}]},
        "config": {"sidecar": {"upstreams": [
            {"name": "acme", "issuer": "https://login.acme.example",
             "redirect_uris": ["https://app.example.com/cb"]},
            {"name": "partner", "issuer": "https://partner.example",
             "grant_types": ["client_credentials"]}]}}},
}
FRONT_ROUTES = ("authorize", "callback", "client-metadata.json", "jwks.json")


def deployment_example(name: str) -> dict[str, Any]:
    """The values of the docs/deployment.md ```yaml block that begins with ``# <name>``."""
    text = (ROOT / "docs" / "deployment.md").read_text()
    match = re.search(rf"```yaml\n(# {re.escape(name)}.*?)```", text, re.DOTALL)
    assert match, f"the {name} example is in docs/deployment.md"
    return dict(yaml.safe_load(match.group(1)))


def render(chart: Path | str, values: dict[str, Any], name: str = "shop") -> list[dict[str, Any]]:
    with helm.Chart.load(str(chart)) as loaded:
        manifests = loaded.render(values=values, name=name, namespace="apps")
    docs = []
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = of_kind(docs, "Deployment")
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = pod_spec(docs)
    return [*spec.get("initContainers", []), *spec["containers"]]


def sidecar_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(c for c in containers(docs) if c["name"] == "dcr-sidecar")


@pytest.fixture(scope="module")
def example_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example application chart with its file:// dependency vendored (as
    `helm dependency update` does), in a copy so the work tree stays clean."""
    root = tmp_path_factory.mktemp("charts")
    shutil.copytree(ROOT / "charts", root / "charts")
    example = root / "charts" / "examples" / "app-with-sidecar"
    helm.dependency_update(str(example))
    return example


def test_chart_version_matches_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert f'define "dcr-sidecar.appVersion" -}}}}{version}{{{{' in helpers


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_lints_without_errors(mode: str) -> None:
    report = helm.lint(str(CHART), MODES[mode], strict=False)
    errors = [m for m in report["messages"] if m["severity"] >= 3]
    assert not errors, errors
    assert not report["errors"]


def test_example_chart_lints_without_errors(example_chart: Path) -> None:
    report = helm.lint(str(example_chart), {})
    assert not [m for m in report["messages"] if m["severity"] >= 3]
    assert not report["errors"]


@pytest.mark.parametrize("mode", MODES)
def test_core_manifests_are_valid_kubernetes(mode: str) -> None:
    """Strict schemas (unknown fields rejected) of the oldest supported and the newest
    Kubernetes version (1.29 for native sidecars)."""
    docs = render(CHART, MODES[mode])
    oldest = NATIVE_KUBE if mode == "native-sidecar" else MIN_KUBE
    core = [d for d in docs if d["kind"] in CORE_KINDS]
    assert {d["kind"] for d in core} >= {"Deployment", "Service"}
    for doc in core:
        for version in (oldest, LATEST_KUBE):
            kubernetes_validate.validate(doc, version, strict=True)


def test_native_sidecar_mode_is_an_init_container_that_keeps_running() -> None:
    docs = render(CHART, {"nativeSidecar": True})
    spec = pod_spec(docs)
    (init,) = spec["initContainers"]
    assert init["name"] == "dcr-sidecar"
    assert init["restartPolicy"] == "Always"
    assert "startupProbe" in init  # the app starts once the sidecar is up
    assert [c["name"] for c in spec["containers"]] == ["app"]
    (deployment,) = of_kind(docs, "Deployment")
    # The field arrived in 1.28 (alpha, behind a feature gate; on by default from 1.29):
    # a 1.27 API server would reject it, and the strict schema says so.
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.27.0", strict=True)


@pytest.mark.parametrize("mode", MODES)
def test_security_defaults_on_every_container(mode: str) -> None:
    docs = render(CHART, MODES[mode])
    spec = pod_spec(docs)
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in containers(docs):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, container["name"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def sidecar_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (configmap,) = of_kind(docs, "ConfigMap")
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["sidecar.yaml"])
    return config


def test_probes_hit_the_management_port_bound_on_all_interfaces() -> None:
    docs = render(CHART, {"ports": {"management": 9191}})
    sidecar = sidecar_container(docs)
    (port,) = sidecar["ports"]
    assert port == {"name": "dcr-mgmt", "containerPort": 9191, "protocol": "TCP"}
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        assert sidecar[probe]["httpGet"] == {"path": path, "port": "dcr-mgmt"}
    config = sidecar_config(docs)
    assert config["management"] == {"host": "0.0.0.0", "port": 9191}  # noqa: S104 - kubelet
    assert config["listen"] == {"host": "127.0.0.1", "port": 8080}


def test_rendered_config_is_a_valid_sidecar_config_and_its_checksum_rolls_the_pod() -> None:
    docs = render(CHART, {"config": {"sidecar": {"upstreams": [
        {"name": "acme", "issuer": "https://login.acme.example", "grant_types":
         ["client_credentials"], "redirect_uris": []}]}}})
    (configmap,) = of_kind(docs, "ConfigMap")
    text = configmap["data"]["sidecar.yaml"]
    settings = parse_settings(text, "configmap")
    # An emptyDir is 0777 (the sidecar refuses such a directory): the store goes one level down.
    assert settings.store.path == "/var/lib/dcr-sidecar/store/credentials.json"
    assert settings.store.ephemeral is True  # an emptyDir dies with the pod
    (deployment,) = of_kind(docs, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/config"] == hashlib.sha256(text.rstrip("\n").encode()).hexdigest()
    mounts = {m["name"]: m for m in sidecar_container(docs)["volumeMounts"]}
    assert mounts["dcr-sidecar-config"]["mountPath"] == "/etc/dcr-sidecar/config"
    assert "subPath" not in mounts["dcr-sidecar-config"]  # updates reach the file: reload
    assert mounts["dcr-sidecar-state"]["mountPath"] == "/var/lib/dcr-sidecar"
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert "emptyDir" in volumes["dcr-sidecar-state"]


def test_secrets_are_files_and_a_claim_makes_the_store_durable() -> None:
    docs = render(CHART, MODES["secrets-pvc"])
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["dcr-sidecar-secrets"]["secret"]["secretName"] == "oauth-secrets"
    assert volumes["dcr-sidecar-state"]["persistentVolumeClaim"] == {"claimName": "dcr-state"}
    mounts = {m["name"]: m for m in sidecar_container(docs)["volumeMounts"]}
    assert mounts["dcr-sidecar-secrets"] == {"name": "dcr-sidecar-secrets", "readOnly": True,
                                             "mountPath": "/etc/dcr-sidecar/secrets"}
    config = sidecar_config(docs)
    assert config["store"]["ephemeral"] is False
    assert config["admin"] == {"token": {"file": "/etc/dcr-sidecar/secrets/admin-token"}}
    assert not [c for c in containers(docs) if "env" in c]  # no secret through the environment


def test_redis_store_url_comes_from_a_secret_file() -> None:
    docs = render(CHART, REDIS)
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    config = sidecar_config(docs)
    assert config["store"] == {"backend": "redis", "url": {"file": "/etc/dcr-sidecar/store/url"},
                               "key_prefix": "dcr-sidecar"}
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["dcr-sidecar-store"]["secret"]["secretName"] == "dcr-redis"


@pytest.mark.parametrize("values", [
    {"replicaCount": 2},
    {"replicaCount": 3, "store": {"file": {"existingClaim": "shared"}}},
], ids=["emptydir", "claim"])
def test_more_than_one_replica_without_redis_fails_to_render(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"replicas need the shared redis store "
                                                   r"\(store.backend: redis"):
        render(CHART, values)


def test_redis_without_its_secret_fails_to_render() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"store\.redis\.existingSecret"):
        render(CHART, {"store": {"backend": "redis"}})


def test_values_schema_rejects_unknown_keys_and_backends() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema({})
        for bad in ({"store": {"backend": "etcd"}}, {"replicas": 2}, {"ports": {"management": 0}}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)


def test_service_monitor_scrapes_the_pod_s_management_port() -> None:
    """ServiceMonitor -> metrics Service (by labels, by port name) -> the pod (by labels) ->
    the sidecar's management container port, path /metrics."""
    docs = render(CHART, MODES["metrics"])
    (monitor,) = of_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "apps"
    assert monitor["metadata"]["labels"]["team"] == "id"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": ["apps"]}
    services = of_kind(docs, "Service")
    selected = [s for s in services
                if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert len(selected) == 1
    (service,) = selected
    (endpoint,) = spec["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    (deployment,) = of_kind(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    target = [p for p in sidecar_container(docs)["ports"] if p["name"] == port["targetPort"]]
    assert target
    assert target[0]["containerPort"] == sidecar_config(docs)["management"]["port"]


def test_default_mode_exposes_only_the_app() -> None:
    docs = render(CHART, {})
    (service,) = of_kind(docs, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    app = next(c for c in containers(docs) if c["name"] == "app")
    assert app["args"][0] == "demo-app"  # the project's demo app, from the same image
    assert app["image"] == sidecar_container(docs)["image"] == "dcr-sidecar:0.1.0"
    assert not of_kind(docs, "ServiceMonitor")


@pytest.mark.parametrize("native", [False, True], ids=["container", "native-sidecar"])
def test_example_app_chart_adds_the_sidecar_with_the_named_templates(
        example_chart: Path, native: bool) -> None:
    docs = render(example_chart, {"dcr-sidecar": {"nativeSidecar": native}})
    assert len(of_kind(docs, "Deployment")) == 1  # the app chart's own; the dependency's is off
    spec = pod_spec(docs)
    names = [c["name"] for c in spec["containers"]]
    init = [c["name"] for c in spec.get("initContainers", [])]
    assert (init, names) == ((["dcr-sidecar"], ["app"]) if native else
                             ([], ["app", "dcr-sidecar"]))
    (configmap,) = of_kind(docs, "ConfigMap")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dcr-sidecar-config"]["configMap"]["name"] == configmap["metadata"]["name"]
    (service,) = of_kind(docs, "Service")
    # The app, and the sidecar's front listener (the example enables it; never the back channel).
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", "dcr-front"]
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, NATIVE_KUBE if native else MIN_KUBE, strict=True)
            kubernetes_validate.validate(doc, LATEST_KUBE, strict=True)


def test_example_app_chart_with_replicas_but_no_redis_fails(example_chart: Path) -> None:
    with pytest.raises(helm.HelmRenderError, match="2 replicas need the shared redis store"):
        render(example_chart, {"replicaCount": 2})


def test_front_listener_gets_a_port_a_service_port_and_an_ingress_of_exact_paths() -> None:
    """front.enabled: the sidecar listens on 0.0.0.0:8081 with the TLS Secret's files (mounted
    as a directory, so a rotation reaches them) and public_base_url; the Service's `front`
    port leads there; the Ingress routes only the four front-channel paths per upstream."""
    docs = render(CHART, MODES["front-ingress"])
    sidecar = sidecar_container(docs)
    front_port = next(p for p in sidecar["ports"] if p["name"] == "dcr-front")
    assert front_port["containerPort"] == 8081
    config = sidecar_config(docs)
    assert config["front"] == {"host": "0.0.0.0", "port": 8081, "tls": {  # noqa: S104 - a pod
        "cert_file": "/etc/dcr-sidecar/tls/tls.crt", "key_file": "/etc/dcr-sidecar/tls/tls.key"}}
    assert config["public_base_url"] == "https://app.example.com"
    mounts = {m["name"]: m for m in sidecar["volumeMounts"]}
    assert mounts["dcr-sidecar-tls"]["mountPath"] == "/etc/dcr-sidecar/tls"
    assert "subPath" not in mounts["dcr-sidecar-tls"]
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["dcr-sidecar-tls"]["secret"]["secretName"] == "app-front-tls"
    (service,) = of_kind(docs, "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["front"]["targetPort"] == "dcr-front"
    (ingress,) = of_kind(docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "app-tls", "hosts": ["app.example.com"]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "app.example.com"
    paths = rule["http"]["paths"]
    assert [p["path"] for p in paths] == [f"/{name}/{route}" for name in ("acme", "partner")
                                          for route in FRONT_ROUTES]
    for path in paths:
        assert path["pathType"] == "Exact"
        assert path["backend"]["service"] == {"name": service["metadata"]["name"],
                                              "port": {"name": "front"}}


def test_rendered_front_config_is_a_valid_sidecar_config() -> None:
    values = {**MODES["front-ingress"], "front": {"enabled": True,
                                                  "publicBaseUrl": "https://app.example.com"}}
    settings = parse_settings(yaml.safe_dump(sidecar_config(render(CHART, values))), "cm")
    assert settings.front is not None
    assert settings.front.tls is None  # the Ingress terminates TLS
    acme = settings.upstreams[0]
    assert settings.cimd_document_url(acme) == \
        "https://app.example.com/acme/client-metadata.json"


@pytest.mark.parametrize(("values", "message"), [
    ({"front": {"enabled": True}}, r"front\.enabled needs front\.publicBaseUrl"),
    ({"ingress": {"enabled": True}}, r"ingress\.enabled routes to the front listener"),
    ({"front": {"enabled": True, "publicBaseUrl": "https://a.example"},
      "ingress": {"enabled": True}}, r"ingress\.enabled needs upstream names"),
], ids=["no-public-url", "ingress-without-front", "ingress-without-names"])
def test_front_and_ingress_misconfigurations_fail_to_render(values: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(CHART, values)


def test_example_app_chart_routes_the_front_channel_through_its_own_service(
        example_chart: Path) -> None:
    """The example: its Service carries the sidecar's `front` port, the dependency's Ingress
    sends the four front-channel paths there, and everything is valid Kubernetes."""
    docs = render(example_chart, {})
    (service,) = of_kind(docs, "Service")
    assert service["metadata"]["name"] == "shop-app"
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http", "front": "dcr-front"}
    assert any(p["name"] == "dcr-front" for p in sidecar_container(docs)["ports"])
    (ingress,) = of_kind(docs, "Ingress")
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert {p["backend"]["service"]["name"] for p in paths} == {"shop-app"}
    assert [p["path"] for p in paths] == [f"/acme/{route}" for route in FRONT_ROUTES]
    config = sidecar_config(docs)
    assert config["public_base_url"] == "https://app.example.com"
    del config["upstreams"][0]["initial_access_token"]  # a file that exists only in the pod
    settings = parse_settings(yaml.safe_dump(config), "cm")
    assert settings.upstreams[0].cimd_possible
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, MIN_KUBE, strict=True)
            kubernetes_validate.validate(doc, LATEST_KUBE, strict=True)


def test_the_front_example_of_docs_deployment_renders_and_validates() -> None:
    """docs/deployment.md's complete Kubernetes example (front, Service, Ingress, redis
    replicas) renders, lints, is valid Kubernetes and gives a valid sidecar config."""
    values = deployment_example("values-front.yaml")
    report = helm.lint(str(CHART), values, strict=False)
    assert not [m for m in report["messages"] if m["severity"] >= 3]
    docs = render(CHART, values)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "Ingress", "ConfigMap"}
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, MIN_KUBE, strict=True)
            kubernetes_validate.validate(doc, LATEST_KUBE, strict=True)
    (service,) = of_kind(docs, "Service")
    assert "front" in {p["name"] for p in service["spec"]["ports"]}
    config = sidecar_config(docs)
    config["upstreams"][0].pop("initial_access_token")  # files that exist only in the pod
    config.pop("admin")
    config["store"]["url"] = "redis://127.0.0.1:6379/0"
    settings = parse_settings(yaml.safe_dump(config), "cm")
    assert settings.cimd_document_url(settings.upstreams[0]) == \
        "https://shop.example.com/acme/client-metadata.json"
