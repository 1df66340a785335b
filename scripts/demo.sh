#!/usr/bin/env bash
# `make demo`: a real OIDC provider (node oidc-provider), the sidecar with config/dev.yaml, and
# the demo app. Ctrl-C stops all three. Every port can be changed:
#   PROVIDER_PORT (9400)  SIDECAR_PORT (8080)  MANAGEMENT_PORT (9090)  DEMO_PORT (8000)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PROVIDER_PORT="${PROVIDER_PORT:-9400}" SIDECAR_PORT="${SIDECAR_PORT:-8080}"
export MANAGEMENT_PORT="${MANAGEMENT_PORT:-9090}" DEMO_PORT="${DEMO_PORT:-8000}"
export DEMO_ISSUER="http://127.0.0.1:${PROVIDER_PORT}"

# Fail at once, naming the busy port and the variable that moves it.
$PY - <<'PY' || exit 1
import os, socket, sys
busy = []
for var in ("PROVIDER_PORT", "SIDECAR_PORT", "MANAGEMENT_PORT", "DEMO_PORT"):
    port = int(os.environ[var])
    with socket.socket() as sock:
        # As the servers do: a port whose last connections linger in TIME_WAIT (a demo stopped
        # a moment ago) is free to listen on; only a socket still bound to it makes it busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            busy.append(f"demo: port {port} on 127.0.0.1 is busy: run with {var}=<a free port>"
                        f" (e.g. {var}={port + 1} make demo)")
if busy:
    print("\n".join(busy), file=sys.stderr)
    sys.exit(1)
PY

pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

wait_http() {  # wait_http URL NAME PID: poll until the URL answers; stop if PID exits; 60 s max
  for _ in $(seq 1 300); do
    if $PY -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$3" 2>/dev/null; then
      echo "demo: $2 exited before answering at $1 (see its output above)" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "demo: $2 did not come up at $1" >&2
  exit 1
}

# The demo provider keeps its clients in memory: a client stored by an earlier demo is unknown to
# this one (its login page would say invalid_client). Start from an empty store; the sidecar
# registers a fresh client at start-up (prefetch in config/dev.yaml).
rm -f .dcr-sidecar/demo-credentials.json .dcr-sidecar/demo-client-id

$PY -m tests.support.oidc --config "{\"port\": ${PROVIDER_PORT}}" &
pids+=($!)
wait_http "${DEMO_ISSUER}/.well-known/openid-configuration" "the OIDC provider" "$!"

$PY -m dcr_sidecar serve --config config/dev.yaml &
pids+=($!)
wait_http "http://127.0.0.1:${MANAGEMENT_PORT}/healthz" "the sidecar" "$!"

$PY -m dcr_sidecar demo-app --sidecar "http://127.0.0.1:${SIDECAR_PORT}" --upstream demo \
  --port "${DEMO_PORT}" &
pids+=($!)
wait_http "http://127.0.0.1:${DEMO_PORT}/" "the demo app" "$!"

cat <<MSG

  dcr-sidecar demo is running:
    open  http://127.0.0.1:${DEMO_PORT}/   and click "Log in" (any login name and password work)
    sidecar     http://127.0.0.1:${SIDECAR_PORT}/demo/client   (the client_id and how it was obtained, never a secret)
    management  http://127.0.0.1:${MANAGEMENT_PORT}/readyz
  Ctrl-C stops everything.

MSG
wait -n "${pids[@]}"
