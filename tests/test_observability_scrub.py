"""Log redaction (design.md §3.9): what a Redactor's `scrub` and its processor mask, and that the
fast path (values with neither whitespace nor "=" skip the credential pattern) changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcr_sidecar import observability
from dcr_sidecar.oauth.secret import MASK, Secret
from dcr_sidecar.observability import Redactor

REDACTOR = Redactor()  # this module's own: no logging renders through it
REDACTOR.remember("s3cr3t-value-123")
scrub = REDACTOR.scrub

NO_DB = settings(database=None, deadline=None, max_examples=400)


def slow_scrub(text: str) -> str:
    """The definition: the credential pattern on every value, then the known secrets."""
    text = observability._CREDENTIAL_RE.sub(
        lambda m: (m.group(2) or (m.group(1) + " ")) + MASK, text)
    for secret in REDACTOR.known:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


@pytest.mark.parametrize(("text", "expected"), [
    ("Basic Y2xpZW50OnNlY3JldA==", f"Basic {MASK}"),
    ("header was bearer abc.def-ghi", f"header was bearer {MASK}"),
    ("DPoP\teyJhbGciOi", f"DPoP {MASK}"),
    ("grant_type=x&client_secret=s3cr3t&scope=a", f"grant_type=x&client_secret={MASK}&scope=a"),
    ("code=abc", f"code={MASK}"),
    ("refresh_token=r1 and token=t1", f"refresh_token={MASK} and token={MASK}"),
    ("/{name:[a-z0-9][a-z0-9-]{0,62}}/token", "/{name:[a-z0-9][a-z0-9-]{0,62}}/token"),
    ("request_handled", "request_handled"),
    ("0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
])
def test_scrub_masks_credentials_and_keeps_plain_values(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_scrub_masks_remembered_secrets_in_values_without_spaces() -> None:
    """A known secret is masked even where the credential pattern cannot match."""
    redactor = Redactor()
    redactor.remember(Secret("s3cr3t-value-123"))
    assert redactor.scrub("prefix-s3cr3t-value-123-suffix") == f"prefix-{MASK}-suffix"


WORDS = st.sampled_from(["basic", "Bearer", "DPOP", "client_secret", "code", "token",
                         "access_token", "=", " ", "\t", "\u2003", "&", "'", '"', "x9._~+/-",
                         "s3cr3t-value-123"])


@NO_DB
@given(st.lists(st.one_of(WORDS, st.text(max_size=8)), max_size=12).map("".join))
def test_scrub_fast_path_equals_the_full_pattern(text: str) -> None:
    assert scrub(text) == slow_scrub(text)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("client_secret", 12345, MASK),
    ("Authorization", "Basic abc", MASK),
    ("detail", Secret("x" * 10), MASK),
    ("client_secret", None, None),
    ("status", 200, 200),
    ("duration_ms", 1.5, 1.5),
    ("registration_client_uri", "https://as.test/reg/1?token=t#f", "https://as.test/reg/1"),
    ("detail", "sent Bearer abc", f"sent Bearer {MASK}"),
    ("detail", {"client_secret": "x", "n": ["code=1"]}, {"client_secret": MASK,
                                                         "n": [f"code={MASK}"]}),
])
def test_redact_processor(key: str, value: Any, expected: Any) -> None:
    assert Redactor()(None, "info", {key: value})[key] == expected
