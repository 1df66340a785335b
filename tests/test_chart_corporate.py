"""The chart inside a corporate network: a trust bundle mounted from a ConfigMap and a projected
service-account token for workload identity render, lint, validate as Kubernetes and give the
sidecar a valid configuration that points at the mounted files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import trustme
import yaml

from dcr_sidecar.config import parse_settings
from tests.test_chart import (
    CHART,
    CORE_KINDS,
    LATEST_KUBE,
    MIN_KUBE,
    deployment_example,
    of_kind,
    pod_spec,
    render,
    sidecar_container,
)

CORPORATE: dict[str, Any] = {
    "trustBundle": {"configMap": "corp-trust-bundle", "key": "trust-bundle.pem"},
    "workloadIdentity": {"enabled": True, "audience": "api://AzureADTokenExchange",
                         "expirationSeconds": 3600, "path": "corp-token",
                         "upstreams": ["corp"]},
    "serviceAccountName": "orders",
    "config": {"sidecar": {"upstreams": [
        {"name": "corp", "issuer": "https://login.corp.example/tenant",
         "client_id": "orders-service", "grant_types": ["client_credentials"]},
        {"name": "partner", "issuer": "https://partner.example",
         "grant_types": ["client_credentials"]}]}},
}


def sidecar_yaml(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (configmap,) = of_kind(docs, "ConfigMap")
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["sidecar.yaml"])
    return config


def test_corporate_values_lint_and_are_valid_kubernetes() -> None:
    report = helm.lint(str(CHART), CORPORATE, strict=False)
    assert not [m for m in report["messages"] if m["severity"] >= 3]
    assert not report["errors"]
    docs = render(CHART, CORPORATE)
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, MIN_KUBE, strict=True)
            kubernetes_validate.validate(doc, LATEST_KUBE, strict=True)


def test_trust_bundle_and_projected_token_are_mounted_as_directories() -> None:
    """The bundle ConfigMap and the projected token (audience, lifetime, path) are volumes,
    mounted read-only without subPath so rotations reach the files; the pod runs as the
    named ServiceAccount and still mounts no API token."""
    docs = render(CHART, CORPORATE)
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["dcr-sidecar-trust"]["configMap"] == {"name": "corp-trust-bundle"}
    assert volumes["dcr-sidecar-workload-token"]["projected"]["sources"] == [
        {"serviceAccountToken": {"audience": "api://AzureADTokenExchange",
                                 "expirationSeconds": 3600, "path": "corp-token"}}]
    mounts = {m["name"]: m for m in sidecar_container(docs)["volumeMounts"]}
    assert mounts["dcr-sidecar-trust"] == {"name": "dcr-sidecar-trust", "readOnly": True,
                                           "mountPath": "/etc/dcr-sidecar/trust"}
    assert mounts["dcr-sidecar-workload-token"] == {
        "name": "dcr-sidecar-workload-token", "readOnly": True,
        "mountPath": "/var/run/secrets/dcr-sidecar/tokens"}
    spec = pod_spec(docs)
    assert spec["serviceAccountName"] == "orders"
    assert spec["automountServiceAccountToken"] is False


def test_rendered_config_points_at_the_mounted_files_and_is_valid(tmp_path: Path) -> None:
    """security.tls.ca_file is the bundle's file; the named upstream (only it) gets
    client_assertion.file = the token's path. With those files in place the rendered
    configuration parses."""
    config = sidecar_yaml(render(CHART, CORPORATE))
    assert config["security"]["tls"] == {"ca_file": "/etc/dcr-sidecar/trust/trust-bundle.pem",
                                         "system": True}
    corp, partner = config["upstreams"]
    assert corp["client_assertion"] == {
        "file": "/var/run/secrets/dcr-sidecar/tokens/corp-token"}
    assert "client_assertion" not in partner

    (tmp_path / "ca.pem").write_bytes(trustme.CA().cert_pem.bytes())
    (tmp_path / "token").write_text("a.b.c")  # read at first use, not at load
    config["security"]["tls"]["ca_file"] = str(tmp_path / "ca.pem")
    corp["client_assertion"]["file"] = str(tmp_path / "token")
    settings = parse_settings(yaml.safe_dump(config), "configmap")
    assert settings.upstreams[0].static_auth_method == "private_key_jwt"
    assert settings.security.tls.ca_file == str(tmp_path / "ca.pem")


def test_a_bundle_alone_keeps_the_user_s_security_settings() -> None:
    values = {"trustBundle": {"configMap": "bundle", "system": False},
              "config": {"sidecar": {"security": {"allow_http": ["127.0.0.1"]}}}}
    config = sidecar_yaml(render(CHART, values))
    assert config["security"] == {"allow_http": ["127.0.0.1"], "tls": {
        "ca_file": "/etc/dcr-sidecar/trust/ca.crt", "system": False}}
    assert "dcr-sidecar-workload-token" not in {
        v["name"] for v in pod_spec(render(CHART, values))["volumes"]}


def test_the_corporate_example_of_docs_deployment_renders_and_validates() -> None:
    """docs/deployment.md's chart example (trust bundle, projected token, egress proxy)
    lints, is valid Kubernetes and points the sidecar at the mounted files."""
    values = deployment_example("values-corporate.yaml")
    report = helm.lint(str(CHART), values, strict=False)
    assert not [m for m in report["messages"] if m["severity"] >= 3]
    docs = render(CHART, values)
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, MIN_KUBE, strict=True)
            kubernetes_validate.validate(doc, LATEST_KUBE, strict=True)
    config = sidecar_yaml(docs)
    assert config["security"]["tls"]["ca_file"] == "/etc/dcr-sidecar/trust/trust-bundle.pem"
    assert config["upstreams"][0]["client_assertion"] == {
        "file": "/var/run/secrets/dcr-sidecar/tokens/corp-token"}
    assert config["egress"]["proxy"] == "http://proxy.corp.example:3128"


@pytest.mark.parametrize(("values", "message"), [
    ({"workloadIdentity": {"enabled": True}}, r"workloadIdentity\.enabled needs "
                                              r"workloadIdentity\.audience"),
    ({"workloadIdentity": {"enabled": True, "audience": "a", "upstreams": ["nope"]}},
     r"workloadIdentity\.upstreams names \"nope\", which is not in config\.sidecar\.upstreams"),
], ids=["no-audience", "unknown-upstream"])
def test_workload_identity_misconfigurations_fail_to_render(values: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(CHART, values)


def test_values_schema_refuses_a_token_lifetime_below_the_kubernetes_minimum() -> None:
    with pytest.raises(helm.HelmValuesError, match="expirationSeconds': minimum: got 60"):
        render(CHART, {"workloadIdentity": {"expirationSeconds": 60}})
