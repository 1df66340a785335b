"""The demo relying party behind ``dcr-sidecar demo-app``.

An ordinary OpenID Connect client (authorization code + PKCE S256) that knows nothing about client
registration: it only talks to the sidecar. Per login it reads the real ``client_id`` from
``GET {sidecar}/{upstream}/client`` (never a secret; re-read per login because a new client
generation changes it), reads the AS metadata the sidecar rewrites, sends the browser to the
sidecar's ``/authorize``, and exchanges the code at the sidecar's ``/token`` without any client
authentication of its own (the sidecar injects the real one). It then validates the ID token against
the AS's JWKS and shows the claims.

Modules, one job each: ``idtoken`` (pure JWT/JWK checks, unit-tested without a server),
``logins`` (server-side state), ``sidecar`` (calls, with their request ids), ``pages`` (HTML),
``result`` (the result page with its 'What the sidecar did' panel), ``app`` (routes) and ``cli``.
base64url and PKCE come from :mod:`dcr_sidecar.oauth`.

Nothing here ever renders a token or a secret: the access token is shown truncated to 8 characters,
the refresh token as "present: yes/no", and errors as ``error`` / ``error_description`` only.
"""

from dcr_sidecar.demo.cli import add_arguments, create_demo_app, main, run_demo_app

__all__ = ["add_arguments", "create_demo_app", "main", "run_demo_app"]
