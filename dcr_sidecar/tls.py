"""Trust anchors for outbound TLS (``security.tls``) and certificate failures in plain words.

Invariants:
- Certificates are always verified, host name included; no setting turns that off. The
  settings only choose what is trusted: the system store (``system``), extra PEM anchors from
  ``ca_file`` and from every file of ``ca_dir`` (a cert-manager trust-manager bundle, a
  mounted ConfigMap), or only those.
- The anchors are read again when those files change (:mod:`dcr_sidecar.filewatch`); a change
  that does not load keeps the anchors in force and is logged. A new context also means new
  connections: aiohttp pools connections per SSL context, so none verified under the old
  anchors is reused.
- A verification failure names the host, the check that failed (unknown issuer, expired, not
  yet valid, name mismatch) and what fixes it (:func:`describe_failure`).
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import structlog

from dcr_sidecar.config import Tls
from dcr_sidecar.filewatch import Watched

log = structlog.get_logger(__name__)
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"

__all__ = ["AnchorError", "TrustAnchors", "build_context", "describe_failure"]


class AnchorError(ValueError):
    """An anchor source that cannot be used; `key` is its setting under security.tls."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"security.tls.{key}: {message}")
        self.key, self.message = key, message


def _dir_pems(directory: str) -> list[str]:
    """The PEM text of every regular file in `directory` holding a certificate (others and
    Kubernetes' ``..data`` bookkeeping are skipped)."""
    found = []
    for name in sorted(os.listdir(directory)):
        path = Path(directory, name)
        if name.startswith(".") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if PEM_CERTIFICATE in text:
            found.append(text)
    return found


def build_context(tls: Tls) -> ssl.SSLContext:
    """A verifying client context with the configured anchors; raises :class:`AnchorError`
    naming the setting and the file when an anchor source cannot be read or holds no
    certificate."""
    context = ssl.create_default_context() if tls.system else ssl.SSLContext(
        ssl.PROTOCOL_TLS_CLIENT)  # verifies certificates and host names, trusts nothing yet
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca_file is not None:
        try:
            text = Path(tls.ca_file).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise AnchorError("ca_file", f"cannot read {tls.ca_file!r}: {exc.strerror}") from None
        _load(context, text, "ca_file", repr(tls.ca_file))
    if tls.ca_dir is not None:
        try:
            pems = _dir_pems(tls.ca_dir)
        except OSError as exc:
            raise AnchorError("ca_dir", f"cannot read {tls.ca_dir!r}: {exc.strerror}") from None
        if not pems:
            raise AnchorError("ca_dir", f"no file in {tls.ca_dir!r} holds a PEM certificate")
        for text in pems:
            _load(context, text, "ca_dir", f"a file in {tls.ca_dir!r}")
    return context


def _load(context: ssl.SSLContext, text: str, key: str, source: str) -> None:
    if PEM_CERTIFICATE not in text:
        raise AnchorError(key, f"{source} holds no PEM certificate ({PEM_CERTIFICATE})")
    try:
        context.load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError) as exc:
        raise AnchorError(key, f"{source} holds a certificate that does not parse: "
                               f"{getattr(exc, 'reason', None) or exc}") from None


class TrustAnchors:
    """The SSL context for outbound connections: ``True`` (aiohttp's default, the system
    store) when ``security.tls`` is left as it is, else a context rebuilt on file changes."""

    def __init__(self, tls: Tls) -> None:
        self.tls = tls
        paths = [p for p in (tls.ca_file, tls.ca_dir) if p is not None]
        self._watched = Watched(paths, lambda: build_context(tls),
                                on_error=self._reload_failed) if paths or not tls.system else None

    def context(self) -> ssl.SSLContext | bool:
        return True if self._watched is None else self._watched.get()

    @staticmethod
    def _reload_failed(exc: Exception) -> None:
        log.error("trust_anchors_reload_failed", detail=str(exc),
                  note="the anchors loaded before stay in force")


# OpenSSL X509_V_ERR_* codes (x509_vfy.h) -> (what failed, what fixes it).
_UNKNOWN_ISSUER = (
    "was issued by a certificate authority the sidecar does not trust",
    "add that authority's certificate (PEM) to security.tls.ca_file or security.tls.ca_dir")
_EXPIRED = (
    "has expired",
    "the server must present a renewed certificate (no sidecar setting fixes this; check "
    "also that the sidecar's clock is right)")
_NOT_YET_VALID = (
    "is not valid yet",
    "check the clocks of the sidecar and of whoever issued the certificate (no sidecar "
    "setting fixes this)")
_NAME_MISMATCH = (
    "is not valid for this host name",
    "use the host name the certificate was issued for in the upstream's URLs, or have the "
    "server present a certificate for this name (no sidecar setting turns the check off)")
_FAILURES: dict[int, tuple[str, str]] = {
    2: _UNKNOWN_ISSUER,  # unable to get issuer certificate
    18: ("is self-signed", _UNKNOWN_ISSUER[1]),
    19: _UNKNOWN_ISSUER,  # self-signed certificate in chain
    20: _UNKNOWN_ISSUER,  # unable to get local issuer certificate
    21: _UNKNOWN_ISSUER,  # unable to verify the first certificate
    9: _NOT_YET_VALID,
    10: _EXPIRED,
    13: _NOT_YET_VALID,  # error in certificate's notBefore field
    14: _EXPIRED,  # error in certificate's notAfter field
    62: _NAME_MISMATCH,
    64: ("is not valid for this IP address", _NAME_MISMATCH[1]),
}


def describe_failure(exc: BaseException, host: str, port: int | None) -> str:
    """A certificate verification failure as a person would say it: host, check, fix."""
    where = f"{host}:{port}" if port is not None else host
    code = getattr(exc, "verify_code", None)
    said = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    what, fix = _FAILURES.get(code if isinstance(code, int) else -1, (
        "failed verification", "check the certificate chain the server presents and "
        "security.tls"))
    return (f"TLS certificate check failed for {where}: the certificate {what} "
            f"(OpenSSL: {said}); {fix}")
