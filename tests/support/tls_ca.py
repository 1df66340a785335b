"""A certificate authority made in the test (trustme) and a server certificate for 127.0.0.1,
written as PEM files: for the sidecar's `front.tls` and for clients (and node, through
NODE_EXTRA_CA_CERTS) that must trust it."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import trustme


class LocalCa:
    """A CA made in the test, and a server certificate for 127.0.0.1 written as PEM files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file = directory / "tls.crt"
        self.key_file = directory / "tls.key"
        self.issue()

    @staticmethod
    def new_ca() -> trustme.CA:
        return trustme.CA()

    def issue(self, ca: trustme.CA | None = None) -> None:
        cert = (ca or self.ca).issue_cert("127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        cert.private_key_pem.write_to_path(str(self.key_file))

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def front(self, port: int = 0) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": port,
                "tls": {"cert_file": str(self.cert_file), "key_file": str(self.key_file)}}


