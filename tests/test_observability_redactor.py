"""The Redactor (design.md §3.9): one object per process holding the known-secret registry and
the processor that masks them; pruned when the resolver says a client generation is gone."""

from __future__ import annotations

import io
import json
from pathlib import Path

import structlog

from dcr_sidecar.oauth.secret import MASK, Secret
from dcr_sidecar.observability import Redactor, configure_logging
from dcr_sidecar.store.records import Generation
from tests.conftest import LeakGuard, ProviderFactory, SidecarFactory
from tests.test_admin import ADMIN_TOKEN, AUTH, admin_sidecar, call, stored_generations
from tests.test_metrics import token


def generation(number: int, secret: str | None, token: str | None = None,
               private_key: str | None = None) -> Generation:
    return Generation(generation=number, fingerprint="f", client_id=f"client-{number}",
                      client_secret=Secret(secret) if secret else None,
                      token_endpoint_auth_method="client_secret_basic",
                      registration_access_token=Secret(token) if token else None,
                      private_key=Secret(private_key) if private_key else None)


def masked(redactor: Redactor, text: str) -> str:
    return str(redactor(None, "info", {"detail": text})["detail"])


def test_a_remembered_secret_is_masked_by_the_processor_and_scrub() -> None:
    redactor = Redactor()
    assert masked(redactor, "sent s3cr3t-one-0001 here") == "sent s3cr3t-one-0001 here"
    redactor.remember(Secret("s3cr3t-one-0001"))
    assert masked(redactor, "sent s3cr3t-one-0001 here") == f"sent {MASK} here"
    assert redactor.scrub("x=s3cr3t-one-0001") == f"x={MASK}"
    assert redactor.scrub_document({"s3cr3t-one-0001": ["s3cr3t-one-0001"]}) == {MASK: [MASK]}


def test_short_values_are_not_remembered() -> None:
    redactor = Redactor()
    redactor.remember("abc12")
    redactor.remember(None)
    assert redactor.known == frozenset()


def test_two_redactors_share_nothing() -> None:
    """No module-level registry: what one process object learns, another does not know."""
    one, other = Redactor(), Redactor()
    one.remember("only-in-one-0001")
    assert "only-in-one-0001" in one.known
    assert other.known == frozenset()
    assert masked(other, "only-in-one-0001") == "only-in-one-0001"


def test_a_deleted_generation_s_secrets_are_forgotten() -> None:
    redactor = Redactor()
    redactor.remember_generation("acme", generation(1, "gen1-secret-0001", "gen1-token-0001"))
    redactor.remember_generation("acme", generation(2, "gen2-secret-0002", "gen2-token-0002"))
    redactor.forget_generation("acme", 1)
    assert redactor.known == {"gen2-secret-0002", "gen2-token-0002"}
    assert masked(redactor, "gen1-secret-0001") == "gen1-secret-0001"
    assert masked(redactor, "gen2-secret-0002") == MASK


def test_pruning_keeps_a_secret_another_holder_still_has() -> None:
    """The same value held by two generations (or by the configuration) survives the deletion
    of one of them; generations are told apart by upstream too."""
    redactor = Redactor()
    redactor.remember_generation("acme", generation(1, "shared-secret-0001"))
    redactor.remember_generation("acme", generation(2, "shared-secret-0001"))
    redactor.remember_generation("other", generation(1, "other-secret-0001"))
    redactor.remember("configured-secret-01")
    redactor.remember_generation("acme", generation(3, "configured-secret-01"))
    redactor.forget_generation("acme", 1)
    redactor.forget_generation("acme", 3)
    assert redactor.known == {"shared-secret-0001", "other-secret-0001", "configured-secret-01"}
    redactor.forget_generation("acme", 2)
    assert redactor.known == {"other-secret-0001", "configured-secret-01"}
    redactor.forget_generation("acme", 2)  # again, or an unknown one: nothing happens
    redactor.forget_generation("nobody", 7)
    assert redactor.known == {"other-secret-0001", "configured-secret-01"}


def test_a_private_jwk_is_remembered_with_its_private_members() -> None:
    jwk = json.dumps({"kty": "EC", "crv": "P-256", "x": "public-x-0001", "y": "public-y-0001",
                      "d": "private-d-value-0001"}, sort_keys=True)
    redactor = Redactor()
    redactor.remember_generation("acme", generation(1, None, private_key=jwk))
    assert redactor.known == {jwk, "private-d-value-0001"}
    assert masked(redactor, "d was private-d-value-0001") == f"d was {MASK}"
    redactor.forget_generation("acme", 1)
    assert redactor.known == frozenset()


def test_a_url_secret_is_remembered_with_its_passwords() -> None:
    """store.url: the userinfo password and a sentinel_password appear alone in errors."""
    redactor = Redactor()
    url = ("redis+sentinel://u:redis-pass%2F01@127.0.0.1:26379/mymaster"
           "?sentinel_password=sentinel-pass-01")
    redactor.remember(Secret(url))
    assert redactor.known == {url, "redis-pass/01", "sentinel-pass-01"}


def test_a_value_found_clean_is_masked_after_its_secret_is_remembered() -> None:
    """The clean-value cache belongs to the redactor and is emptied when it learns a secret."""
    redactor = Redactor()
    assert masked(redactor, "later-secret-0001") == "later-secret-0001"
    assert masked(redactor, "later-secret-0001") == "later-secret-0001"  # from the cache
    redactor.remember("later-secret-0001")
    assert masked(redactor, "later-secret-0001") == MASK


def test_logging_renders_through_the_redactor_it_was_given(leak_guard: LeakGuard) -> None:
    """configure_logging installs that object: what it learns later is masked in later lines."""
    own, redactor = io.StringIO(), Redactor()
    configure_logging(redactor, "json", "info", own)
    log = structlog.get_logger("tests.redactor")
    redactor.remember("installed-secret-0001")
    log.info("probe", detail="installed-secret-0001")
    assert json.loads(own.getvalue())["detail"] == MASK


async def test_the_resolver_prunes_the_registry_when_it_deletes_a_generation(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        tmp_path: Path) -> None:
    """Admin DELETE (RFC 7592) of generation 1: its secret and registration access token
    leave the process's registry; generation 2's are in it; configured secrets stay."""
    provider = await oidc()
    side = await admin_sidecar(sidecar, provider.issuer, leak_guard)
    assert side.redactor is leak_guard.redactor
    leak_guard.add_token_response(await token(side))
    (first,) = stored_generations(tmp_path)
    old = {first["client_secret"], first["registration_access_token"]}
    assert old <= side.redactor.known
    status, _, _ = await call(side, "DELETE", "/admin/upstreams/acme/registration", AUTH)
    assert status == 200
    assert not old & side.redactor.known
    assert {ADMIN_TOKEN, "static-secret-value"} <= side.redactor.known
    leak_guard.add_token_response(await token(side))
    (second,) = stored_generations(tmp_path)
    assert {second["client_secret"], second["registration_access_token"]} <= (
        side.redactor.known)


def test_generations_missing_from_the_record_are_forgotten_on_adoption() -> None:
    """Another replica deleted generation 1: adopting a record of generations 2 and 3 forgets
    generation 1's secrets (not another upstream's, not the configuration's)."""
    redactor = Redactor()
    for number in (1, 2):
        redactor.remember_generation("acme", generation(number, f"gen{number}-secret-0001"))
    redactor.remember_generation("other", generation(1, "other-secret-0001"))
    redactor.remember("configured-secret-01")
    redactor.retain_generations("acme", [2, 3])
    assert redactor.known == {"gen2-secret-0001", "other-secret-0001", "configured-secret-01"}
