"""The front listener's TLS (design.md §2.2 `front.tls`): a server context whose certificate
and key are read again when their files change (a cert-manager Secret rotation swaps them).

Invariants:
- The files are watched with :class:`~dcr_sidecar.filewatch.Watched` (Kubernetes' symlink
  swaps included), checked at most once a second, at the start of a TLS handshake: nothing runs
  in the background. New handshakes get the new pair; established connections keep theirs.
- A pair that does not load (a half-written swap, a key that does not match the certificate)
  keeps the previous one serving and is logged; it is tried again at the next change. A pair
  that does not load at start-up is a start-up error.
"""

from __future__ import annotations

import ssl

import structlog

from dcr_sidecar.config import FrontTls as FrontTlsSettings
from dcr_sidecar.filewatch import Watched

log = structlog.get_logger(__name__)
CHECK_INTERVAL = 1.0


def server_context(tls: FrontTlsSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


class FrontTls:
    """The server context to bind with (:attr:`context`); each handshake is handed the context
    of the files' current content."""

    def __init__(self, tls: FrontTlsSettings, *, interval: float = CHECK_INTERVAL) -> None:
        self.tls = tls
        self._watched = Watched([tls.cert_file, tls.key_file], lambda: server_context(tls),
                                on_error=self._reload_failed, interval=interval)
        self.context = self._watched.get()  # raises: a start-up error
        self.context.sni_callback = self._current  # called at every ClientHello, SNI or not

    def _current(self, conn: ssl.SSLObject, server_name: str | None,
                 context: ssl.SSLContext) -> None:
        latest = self._watched.get()
        if latest is not conn.context:
            conn.context = latest

    @property
    def reloads(self) -> int:
        return self._watched.reloads

    def _reload_failed(self, exc: Exception) -> None:
        log.error("front_tls_reload_failed", cert_file=self.tls.cert_file,
                  key_file=self.tls.key_file, detail=f"{type(exc).__name__}: {exc}"[:300],
                  note="the certificate loaded before keeps serving")
