"""RFC 7592 client configuration: read, update, delete at the client configuration endpoint
(`registration_client_uri`) — with typed outcomes. (The management *listener* is management.py.)

401 and 404 mean the client (or its registration access token) is gone (RFC 7592 §2.1-2.3);
403 means the operation is not permitted; 429/5xx are transient.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import structlog

from dcr_sidecar import errors
from dcr_sidecar.config import Upstream
from dcr_sidecar.net import Outbound, Response
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.lifetime import update_body
from dcr_sidecar.oauth.retry import parse_retry_after
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.oauth.text import safe_url
from dcr_sidecar.store.records import Generation

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Answer:
    gone: bool = False
    forbidden: bool = False
    document: dict[str, Any] | None = None


class Rfc7592:
    def __init__(self, outbound: Outbound) -> None:
        self.outbound = outbound

    @staticmethod
    def manageable(gen: Generation) -> bool:
        return bool(gen.registration_access_token and gen.registration_client_uri)

    async def read(self, upstream: Upstream, gen: Generation) -> Answer:
        return await self._call(upstream, _configuration_endpoint(gen), "GET", None)

    async def update(self, upstream: Upstream, gen: Generation,
                     document: dict[str, Any]) -> Answer:
        return await self._call(upstream, _configuration_endpoint(gen), "PUT",
                                update_body(document, gen.client_id))

    async def delete(self, upstream: Upstream, gen: Generation) -> bool:
        """True when the client is deleted or already gone."""
        return await self.delete_at(upstream, _configuration_endpoint(gen))

    async def delete_at(self, upstream: Upstream, endpoint: tuple[str, Secret]) -> bool:
        """DELETE the client at (registration_client_uri, registration_access_token): also for
        a registration the sidecar refused, which has no generation."""
        answer = await self._call(upstream, endpoint, "DELETE", None)
        return answer.gone or not answer.forbidden

    async def _call(self, upstream: Upstream, endpoint: tuple[str, Secret], method: str,
                    body: dict[str, Any] | None) -> Answer:
        uri, token = endpoint
        headers = {"Authorization": f"Bearer {token.reveal()}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        response = await self.outbound.request(
            method, uri, step="renew", upstream=upstream.name, headers=headers, data=data)
        return self._judge(upstream, method, response)

    def _judge(self, upstream: Upstream, method: str, response: Response) -> Answer:
        status = response.status
        where = safe_url(response.url)
        if status in (401, 404):
            return Answer(gone=True)
        if status == 403:
            log.warning("registration_management_forbidden", upstream=upstream.name,
                        method=method, url=where)
            return Answer(forbidden=True)
        if status == 204 and method == "DELETE":
            return Answer()
        if status == 429 or status >= 500:
            raise errors.Unavailable(
                f"{where} answered HTTP {status} to RFC 7592 {method}", step="renew",
                upstream=upstream.name,
                retry_after=parse_retry_after(response.headers.get("Retry-After"), time.time()))
        if status != 200:
            raise errors.BadUpstream(f"{where} answered HTTP {status} to RFC 7592 {method}",
                                     step="renew", upstream=upstream.name)
        if method == "DELETE":
            return Answer()
        try:
            document = response.json()
        except ProtocolError as exc:
            raise errors.BadUpstream(exc.reason, step="renew", upstream=upstream.name) from exc
        if not isinstance(document, dict):
            raise errors.BadUpstream(f"{where} answered a non-object to RFC 7592 {method}",
                                     step="renew", upstream=upstream.name)
        return Answer(document=document)


def _configuration_endpoint(gen: Generation) -> tuple[str, Secret]:
    assert gen.registration_client_uri
    assert gen.registration_access_token
    return gen.registration_client_uri, gen.registration_access_token
