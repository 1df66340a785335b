"""A fast subset of `make conformance` (docs/conformance.md): scenarios of the pinned MCP
conformance suites, each judged by the suite itself, with the app driver plus a real
`dcr-sidecar serve` as the client under test. `make conformance` runs every client-auth
scenario."""

from __future__ import annotations

import pytest

from tests.conformance.run import EXPECTED, run

SUBSET = [
    ("stable", "auth/metadata-var3"),  # metadata named only in the challenge to POST
    ("stable", "auth/scope-from-scopes-supported"),  # the resource's scopes when the app has none
    ("next", "auth/resource-mismatch"),  # RFC 9728 §3.3: the sidecar refuses, the app sees it
    ("next", "auth/iss-wrong-issuer"),  # RFC 9207 mix-up defence at the sidecar's callback
    ("next", "auth/authorization-server-migration"),  # the resource moves to another AS
    ("stable", "auth/basic-cimd"),  # CIMD with the operator's cimd.document_url
    ("stable", "auth/pre-registration"),  # a static client from the operator's config
    ("next", "auth/client-credentials-basic"),  # a service: client_credentials, static client
    ("stable", "auth/client-credentials-jwt"),  # static private_key_jwt: client_key, aud = issuer
    ("next", "auth/wif-jwt-bearer"),  # the app's RFC 7523 §2.1 grant relayed, client injected
]


@pytest.mark.parametrize(("suite", "scenario"), SUBSET)
def test_suite_passes_the_scenario_through_the_sidecar(suite: str, scenario: str) -> None:
    assert scenario not in EXPECTED
    verdict = run(suite, scenario)
    assert verdict.passed, f"{verdict.summary}\n{verdict.output[-4000:]}"
