"""The one exception tree of the sidecar, translated to HTTP at one boundary.

::

    SidecarError                       status  error
    ├── NotFound                       404     not_found
    ├── BadRequest                     400     invalid_request
    │   ├── PayloadTooLarge            413     invalid_request
    │   ├── HeadersTooLarge            431     invalid_request
    │   └── InvalidGrant               400     invalid_grant    (a code the sidecar did not mediate)
    ├── InboundUnauthorized            401     invalid_client   (+ WWW-Authenticate: Basic)
    ├── AdminUnauthorized              401     invalid_token    (+ WWW-Authenticate: Bearer)
    ├── Conflict                       409     conflict
    ├── TooManyFlows                   503     temporarily_unavailable  (+ Retry-After)
    │   └── TooManyFlowsFromClient     429     one client address's budget of flows is spent
    └── UpstreamError                  (carries the resolution `step` that failed)
        ├── Unavailable                503     temporarily_unavailable  (+ Retry-After)
        │   ├── BackingOff             503     the upstream is in backoff after a failure
        │   └── StoreUnavailable       503     the credential store cannot be read or written
        │       └── LeaseLost          503     a write refused: another replica holds the lease
        ├── UpstreamTimeout            504     temporarily_unavailable  (+ Retry-After)
        └── BadUpstream                502     server_error
            ├── DiscoveryFailed        no usable metadata document
            ├── RegistrationRejected   RFC 7591 §3.2.2 error from the AS
            ├── NoDynamicRegistration  404/405/501 from the registration endpoint
            ├── InsufficientRegistration  the §3.2 response rules failed
            ├── NoAuthMethod           no common client authentication method
            ├── PolicyRefused          the outbound address / authority policy refused a URL
            ├── CertificateRejected    the AS's TLS certificate failed verification
            └── CredentialUnavailable  the client's key or ready-made assertion cannot be used

Store failures become ``StoreUnavailable`` in one place, the table in
:mod:`dcr_sidecar.store.errors` (``map_store_errors``); store backends raise nothing else.

``ConfigError`` is separate: it never reaches HTTP, it stops start-up (exit 2).

Descriptions are written for the app's developer and never carry a secret or a raw AS body;
anything an AS said is passed through :func:`dcr_sidecar.oauth.text.clean_text` first.
"""

from __future__ import annotations

from typing import ClassVar, Literal

Step = Literal[
    "discover",
    "select_auth_method",
    "register",
    "store_read",
    "store_write",
    "renew",
    "lease",
    "forward",
]


class SidecarError(Exception):
    status: ClassVar[int] = 500
    error: ClassVar[str] = "server_error"

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    @property
    def retry_after(self) -> int | None:
        return None

    def headers(self) -> dict[str, str]:
        retry = self.retry_after
        return {"Retry-After": str(retry)} if retry is not None else {}


class NotFound(SidecarError):
    status = 404
    error = "not_found"


class BadRequest(SidecarError):
    status = 400
    error = "invalid_request"


class PayloadTooLarge(BadRequest):
    status = 413


class HeadersTooLarge(BadRequest):
    status = 431


class InvalidGrant(BadRequest):
    """Under callback mediation, a code exchange the sidecar has no record for (RFC 6749 §5.2)."""

    error = "invalid_grant"


class InboundUnauthorized(SidecarError):
    status = 401
    error = "invalid_client"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="dcr-sidecar"'}


class AdminUnauthorized(SidecarError):
    status = 401
    error = "invalid_token"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="dcr-sidecar-admin"'}


class Conflict(SidecarError):
    status = 409
    error = "conflict"


class TooManyFlows(SidecarError):
    """The callback-mediation budget is spent: a new authorization request waits until records
    expire or are used (nothing in progress is evicted)."""

    status = 503
    error = "temporarily_unavailable"

    def __init__(self, description: str, *, retry_after: float) -> None:
        super().__init__(description)
        self.retry_hint = retry_after

    @property
    def retry_after(self) -> int:
        return max(1, int(self.retry_hint + 0.999))


class TooManyFlowsFromClient(TooManyFlows):
    status = 429


class UpstreamError(SidecarError):
    """A failure while resolving or calling one upstream; `step` names where it happened."""

    def __init__(self, description: str, *, step: Step, upstream: str | None = None) -> None:
        super().__init__(description)
        self.step: Step = step
        self.upstream = upstream
        # What `doctor` prints: the description without the per-URL summary, and the URLs
        # tried, one mapping each (url, outcome, status, detail), so each is listed once.
        self.headline = description
        self.attempts: tuple[dict[str, object], ...] = ()
        # Set once the resolver has counted this failure toward backoff (nested flights).
        self.accounted = False


class Unavailable(UpstreamError):
    status = 503
    error = "temporarily_unavailable"

    def __init__(
        self,
        description: str,
        *,
        step: Step,
        upstream: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(description, step=step, upstream=upstream)
        self.retry_hint = retry_after

    @property
    def retry_after(self) -> int:
        # Retry-After is whole seconds (RFC 9110 §10.2.3); never advertise 0.
        return max(1, int(self.retry_hint + 0.999)) if self.retry_hint is not None else 1


class BackingOff(Unavailable):
    pass


class StoreUnavailable(Unavailable):
    pass


class LeaseLost(StoreUnavailable):
    """The Redis lease ran out mid-change (a pause, a failover) and the write was refused;
    the resolver adopts the replica that took over."""


class UpstreamTimeout(Unavailable):
    status = 504


class BadUpstream(UpstreamError):
    status = 502
    error = "server_error"


class DiscoveryFailed(BadUpstream):
    pass


class RegistrationRejected(BadUpstream):
    def __init__(
        self,
        description: str,
        *,
        step: Step = "register",
        upstream: str | None = None,
        as_error: str | None = None,
        as_error_description: str | None = None,
    ) -> None:
        super().__init__(description, step=step, upstream=upstream)
        self.as_error = as_error
        self.as_error_description = as_error_description


class NoDynamicRegistration(BadUpstream):
    pass


class InsufficientRegistration(BadUpstream):
    pass


class NoAuthMethod(BadUpstream):
    pass


class PolicyRefused(BadUpstream):
    pass


class CertificateRejected(BadUpstream):
    """Host, failed check and the setting that fixes it (dcr_sidecar.tls.describe_failure)."""


class CredentialUnavailable(BadUpstream):
    """A static client's key file or client assertion file is unusable (expired, unreadable)."""


class ConfigError(Exception):
    """Invalid configuration: the message names the file, the YAML path and the value."""
