#!/usr/bin/env bash
# `make demo`: a real OIDC provider (node oidc-provider) on 127.0.0.1:9400, the sidecar with
# config/dev.yaml on 127.0.0.1:8080 (management on :9090), and the demo app on 127.0.0.1:8000.
# Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
pids=()
cleanup() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

wait_http() {  # wait_http URL NAME: poll until the URL answers, at most 20 s
  for _ in $(seq 1 100); do
    if $PY -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "demo: $2 did not come up at $1" >&2
  exit 1
}

$PY -m tests.support.oidc --config '{"port": 9400}' &
pids+=($!)
wait_http http://127.0.0.1:9400/.well-known/openid-configuration "the OIDC provider"

$PY -m dcr_sidecar serve --config config/dev.yaml &
pids+=($!)
wait_http http://127.0.0.1:9090/healthz "the sidecar"

$PY -m dcr_sidecar demo-app --sidecar http://127.0.0.1:8080 --upstream demo --port 8000 &
pids+=($!)
wait_http http://127.0.0.1:8000/ "the demo app"

cat <<MSG

  dcr-sidecar demo is running:
    open  http://127.0.0.1:8000/   and click "Log in" (any login name and password work)
    sidecar     http://127.0.0.1:8080/demo/client   (the registered client_id, never a secret)
    management  http://127.0.0.1:9090/readyz
  Ctrl-C stops everything.

MSG
wait -n "${pids[@]}"
