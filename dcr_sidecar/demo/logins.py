"""Server-side login state of the demo app: pending logins (state, nonce, PKCE verifier) until
the callback, and finished results until the browser has shown them (post/redirect/get)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

PENDING_TTL: Final = 600.0  # a login must come back within 10 minutes
RESULT_TTL: Final = 1800.0  # a result page can be reloaded for 30 minutes
MAX_PENDING_SESSIONS: Final = 1000
MAX_PENDING_PER_SESSION: Final = 5  # a few tabs may log in at once
MAX_RESULTS: Final = 1000


@dataclass(frozen=True)
class PendingLogin:
    """What /login remembers for /callback (kept server-side, never in the browser)."""

    state: str
    nonce: str
    code_verifier: str
    client_id: str
    metadata: Mapping[str, Any]
    created: float
    client: Mapping[str, Any] = field(default_factory=dict)  # /client at login start
    calls: tuple[Any, ...] = ()  # the sidecar calls made to start it (RecordedCall)


class PendingLogins:
    """Pending logins keyed by session cookie, then by ``state``; bounded and expiring."""

    def __init__(
        self,
        *,
        ttl: float = PENDING_TTL,
        max_sessions: int = MAX_PENDING_SESSIONS,
        max_per_session: int = MAX_PENDING_PER_SESSION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_sessions = max_sessions
        self._max_per_session = max_per_session
        self._clock = clock
        self._sessions: dict[str, dict[str, PendingLogin]] = {}

    def __len__(self) -> int:
        return sum(len(logins) for logins in self._sessions.values())

    def now(self) -> float:
        return self._clock()

    def add(self, session_id: str, login: PendingLogin) -> None:
        self._prune()
        logins = self._sessions.pop(session_id, {})
        logins[login.state] = login
        while len(logins) > self._max_per_session:
            del logins[next(iter(logins))]
        self._sessions[session_id] = logins  # most recently used last
        while len(self._sessions) > self._max_sessions:
            del self._sessions[next(iter(self._sessions))]

    def pop(self, session_id: str, state: str) -> PendingLogin | None:
        """Take (one time) the login for this session and state, if it has not expired."""
        self._prune()
        logins = self._sessions.get(session_id)
        if logins is None:
            return None
        login = logins.pop(state, None)
        if not logins:
            del self._sessions[session_id]
        return login

    def _prune(self) -> None:
        cutoff = self._clock() - self._ttl
        for session_id in list(self._sessions):
            logins = self._sessions[session_id]
            for state in [s for s, login in logins.items() if login.created <= cutoff]:
                del logins[state]
            if not logins:
                del self._sessions[session_id]


# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    session_id: str
    title: str
    body: str  # HTML
    status: int
    created: float


class Results:
    """Finished logins' pages by random id, bound to the session that made them; bounded."""

    def __init__(self, *, ttl: float = RESULT_TTL, limit: int = MAX_RESULTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._limit, self._clock = ttl, limit, clock
        self._pages: dict[str, Result] = {}

    def add(self, session_id: str, title: str, body: str, status: int) -> str:
        result_id = secrets.token_urlsafe(16)
        self._pages[result_id] = Result(session_id, title, body, status, self._clock())
        while len(self._pages) > self._limit:
            del self._pages[next(iter(self._pages))]
        return result_id

    def get(self, session_id: str, result_id: str) -> Result | None:
        """The result this session made under `result_id`, if it has not expired."""
        found = self._pages.get(result_id)
        if found is None or found.session_id != session_id:
            return None
        return found if found.created > self._clock() - self._ttl else None
