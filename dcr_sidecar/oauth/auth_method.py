"""Choosing the token-endpoint authentication method (design.md §3.3).

The first method of the operator's preference list that the AS supports (RFC 8414 §2: an absent
`token_endpoint_auth_methods_supported` means `client_secret_basic`) and the client profile
allows. `none` needs `S256` in `code_challenge_methods_supported` (RFC 7636 / OAuth 2.1): a
public client without PKCE is refused before anything is registered. `private_key_jwt` needs a
signing algorithm both sides have (:func:`~dcr_sidecar.oauth.jose.choose_signing_alg`).
"""

from __future__ import annotations

from collections.abc import Sequence

from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.jose import SIGNING_PREFERENCE, choose_signing_alg

PROFILE_METHODS = {
    "confidential": frozenset({"client_secret_basic", "client_secret_post", "private_key_jwt"}),
    "public": frozenset({"none"}),
    "auto": frozenset({"client_secret_basic", "client_secret_post", "private_key_jwt", "none"}),
}


class NoCommonMethod(ProtocolError):
    pass


def select_auth_method(
    preference: Sequence[str],
    supported: Sequence[str] | None,
    code_challenge_methods: Sequence[str] | None,
    profile: str = "auto",
    signing_algs: Sequence[str] | None = None,
) -> str:
    as_methods = list(supported) if supported is not None else ["client_secret_basic"]
    allowed = PROFILE_METHODS[profile]
    has_s256 = "S256" in (code_challenge_methods or ())
    skipped: list[str] = []
    for method in preference:
        if method not in allowed:
            skipped.append(f"{method} (profile {profile})")
        elif method not in as_methods:
            skipped.append(f"{method} (not offered by the AS)")
        elif method == "none" and not has_s256:
            skipped.append("none (the AS does not advertise S256 PKCE)")
        elif method == "private_key_jwt" and choose_signing_alg(signing_algs) is None:
            skipped.append("private_key_jwt (the AS signs with none of "
                           f"{', '.join(SIGNING_PREFERENCE)})")
        else:
            return method
    raise NoCommonMethod(
        "no usable token endpoint auth method: the AS offers "
        f"{', '.join(as_methods) or 'nothing'}; tried {'; '.join(skipped) or 'nothing'}"
    )
