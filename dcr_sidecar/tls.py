"""The front listener's TLS (design.md §2.2 `front.tls`): a server context whose certificate
and key are re-read when their files change (a cert-manager Secret rotation swaps them).

Invariants: a change is noticed by content (the files' bytes), so Kubernetes' symlink swaps of
a mounted Secret count; a pair that does not load (a half-written swap, a key that does not
match) keeps the previous one serving and is tried again at the next poll. New handshakes use
the new pair; established connections keep theirs.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path

import structlog

from dcr_sidecar.config import FrontTls

log = structlog.get_logger(__name__)


class ReloadingTls:
    """An SSL server context kept in step with `cert_file` and `key_file`."""

    def __init__(self, tls: FrontTls, *, poll: float = 10.0) -> None:
        self.tls = tls
        self.poll = poll
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._seen = b""
        if not self.reload():
            raise OSError(f"front.tls: cannot load {tls.cert_file} and {tls.key_file}")

    def _digest(self) -> bytes:
        digest = hashlib.sha256()
        for path in (self.tls.cert_file, self.tls.key_file):
            digest.update(Path(path).read_bytes())
            digest.update(b"\0")
        return digest.digest()

    def reload(self) -> bool:
        """Load the pair if it changed; True when what serves is the files' current content."""
        try:
            seen = self._digest()
            if seen == self._seen:
                return True
            self.context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("front_tls_reload_failed", cert_file=self.tls.cert_file,
                      key_file=self.tls.key_file, detail=f"{type(exc).__name__}: {exc}")
            return False
        if self._seen:
            log.info("front_tls_reloaded", cert_file=self.tls.cert_file)
        self._seen = seen
        return True

    async def watch(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self.poll)
            await asyncio.to_thread(self.reload)
