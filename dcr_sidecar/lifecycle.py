"""Configuration reload (design.md §3.10): on SIGHUP, and when the config file's content changes.

Invariants:
- The file is watched by the sha256 of its content, read through the configured path, so a
  Kubernetes ConfigMap update (an atomic swap of the ``..data`` symlink) is seen like an edit in
  place; a change of mtime alone, or a swap to identical content, reloads nothing.
- An invalid new configuration is rejected as a whole (logged with the file, YAML path and
  value); the running one keeps serving. Each distinct content is judged once.
- A file that cannot be read (mid-swap, deleted) is skipped until it can.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import structlog

from dcr_sidecar.app import Sidecar
from dcr_sidecar.config import load_settings
from dcr_sidecar.errors import ConfigError

log = structlog.get_logger(__name__)
POLL_INTERVAL_S = 10.0


def content_digest(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    def __init__(self, sidecar: Sidecar, path: str, *, digest: str | None = None,
                 interval_s: float = POLL_INTERVAL_S) -> None:
        self.sidecar = sidecar
        self.path = path
        self.interval_s = interval_s
        self.digest = digest if digest is not None else content_digest(path)

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            await asyncio.sleep(self.interval_s)
            digest = content_digest(self.path)
            if digest is not None and digest != self.digest:
                self.reload("file_changed", digest)

    def reload(self, trigger: str, digest: str | None = None) -> bool:
        """Load the file and apply it; False (and nothing changed) when it is rejected."""
        self.digest = digest or content_digest(self.path) or self.digest
        try:
            result = self.sidecar.reload(load_settings(self.path))
        except ConfigError as exc:
            log.error("config_reload_rejected", path=self.path, trigger=trigger,
                      detail=str(exc), keeps="the running configuration")
            return False
        except Exception as exc:  # a reload must never take the process down
            log.error("config_reload_failed", path=self.path, trigger=trigger, exc_info=exc)
            return False
        if result.restart_required:
            log.warning("config_reload_restart_required", path=self.path,
                        keys=result.restart_required,
                        detail="these keys changed but apply only after a restart")
        log.info("config_reloaded", path=self.path, trigger=trigger, changed=result.changed,
                 upstreams_added=result.added, upstreams_updated=result.updated,
                 upstreams_removed=result.removed)
        return True
