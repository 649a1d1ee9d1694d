#!/usr/bin/env bash
# Sidecar HTTP forward-auth (`/check`, cached key + scope check) against the
# trivial hyper server, measured in one sitting with wrk (BENCHMARKS.md).
# Needs release binaries (cargo build --release --workspace), wrk, GNU time (/usr/bin/time), grpcurl
# and python3; PROFILE=dist takes the sidecar and the trivial server from
# target/dist (cargo build --profile dist -p keyplane-sidecar -p keyplane-tests
# --bin keyplane-sidecar --bin hello-server), the control plane stays release. Everything listens on loopback and stops at exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
# SIDECAR=/path/to/keyplane-sidecar compares another build (e.g. an older commit);
# CREDITS=0 skips the runs with a key that has credits and one with a global
# rate limit (builds without them); FLOOD=0 skips the flood of bad tokens.
PROFILE=${PROFILE:-release}
SIDECAR=${SIDECAR:-target/$PROFILE/keyplane-sidecar}
DATA=$(mktemp -d)
target/release/keyplane serve --data-dir "$DATA" --listen 127.0.0.1:50551 --console-listen off >"$DATA/control-plane.log" 2>&1 &
CP=$!
SC=; HELLO=
trap 'kill $CP $SC $HELLO 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do [ -f "$DATA"/root-token ] && grpcurl -plaintext 127.0.0.1:50551 grpc.health.v1.Health/Check >/dev/null 2>&1 && break; sleep 0.1; done
ROOT=$(cat "$DATA"/root-token)
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
grpcurl -plaintext -H "authorization: Bearer $ROOT" -d '{"org_id": "keyplane", "name": "sidecar", "scopes": ["keyplane:sidecar"]}' \
  127.0.0.1:50551 keyplane.admin.v1.ApiKeyService/CreateApiKey | field '["token"]' > "$DATA"/sidecar-credential
TOKEN=$(grpcurl -plaintext -H "authorization: Bearer $ROOT" -d '{"org_id": "acme", "name": "bench", "scopes": ["orders:read"]}' \
  127.0.0.1:50551 keyplane.admin.v1.ApiKeyService/CreateApiKey | field '["token"]')
# A busy key with plenty of credits (spent from leases), for the credits-on run.
METERED=$(grpcurl -plaintext -H "authorization: Bearer $ROOT" \
  -d '{"org_id": "acme", "name": "metered", "scopes": ["orders:read"], "credits": {"remaining": "1000000000"}}' \
  127.0.0.1:50551 keyplane.admin.v1.ApiKeyService/CreateApiKey | field '["token"]')
# A busy key with a global rate limit far above the load, for the global-limit run.
GLOBAL=$(grpcurl -plaintext -H "authorization: Bearer $ROOT" \
  -d '{"org_id": "acme", "name": "global", "scopes": ["orders:read"], "rate_limit": {"requests": 2000000000, "window": "3600s", "scope": "RATE_LIMIT_SCOPE_GLOBAL"}}' \
  127.0.0.1:50551 keyplane.admin.v1.ApiKeyService/CreateApiKey | field '["token"]')
# A busy key with credits under an identity with credits and a global rate
# limit: every check passes both budgets (IDENTITY=0 skips it, for builds without identities).
if [ "${IDENTITY:-1}" = 1 ]; then
  IDENTITY_ID=$(grpcurl -plaintext -H "authorization: Bearer $ROOT" \
    -d '{"org_id": "acme", "external_id": "bench", "credits": {"remaining": "1000000000"}, "rate_limit": {"requests": 2000000000, "window": "3600s", "scope": "RATE_LIMIT_SCOPE_GLOBAL"}}' \
    127.0.0.1:50551 keyplane.admin.v1.IdentityService/CreateIdentity | field '["identity"]["id"]')
  OF_IDENTITY=$(grpcurl -plaintext -H "authorization: Bearer $ROOT" \
    -d "{\"org_id\": \"acme\", \"name\": \"of identity\", \"scopes\": [\"orders:read\"], \"credits\": {\"remaining\": \"1000000000\"}, \"identity_id\": \"$IDENTITY_ID\"}" \
    127.0.0.1:50551 keyplane.admin.v1.ApiKeyService/CreateApiKey | field '["token"]')
fi
# A key holding a role, checked by a route's permission query (ROLES=0 skips
# it, for builds without roles).
ROUTES=()
if [ "${ROLES:-1}" = 1 ]; then
  grpcurl -plaintext -H "authorization: Bearer $ROOT" \
    -d '{"org_id": "acme", "name": "clerk", "permissions": ["orders.read", "billing.*"]}' \
    127.0.0.1:50551 keyplane.admin.v1.RoleService/CreateRole >/dev/null
  ROLE_KEY=$(grpcurl -plaintext -H "authorization: Bearer $ROOT" -d '{"org_id": "acme", "name": "clerk", "scopes": ["orders:read"]}' \
    127.0.0.1:50551 keyplane.admin.v1.ApiKeyService/CreateApiKey)
  ROLE_TOKEN=$(echo "$ROLE_KEY" | field '["token"]')
  grpcurl -plaintext -H "authorization: Bearer $ROOT" \
    -d "{\"org_id\": \"acme\", \"holder_id\": \"$(echo "$ROLE_KEY" | field '["apiKey"]["id"]')\", \"roles\": [\"clerk\"]}" \
    127.0.0.1:50551 keyplane.admin.v1.RoleService/SetRoles >/dev/null
  ROUTES=(--route-permissions "orders=(orders.read OR orders.admin) AND billing.invoices.read")
fi
"$SIDECAR" --control-plane http://127.0.0.1:50551 --credential-file "$DATA"/sidecar-credential \
  --grpc-listen 127.0.0.1:50561 --http-listen 127.0.0.1:18081 "${ROUTES[@]}" >"$DATA/sidecar.log" 2>&1 &
SC=$!
target/$PROFILE/hello-server 127.0.0.1:18080 >/dev/null 2>&1 &
HELLO=$!
for _ in $(seq 100); do curl -sf -m 2 http://127.0.0.1:18081/readyz >/dev/null && break; sleep 0.1; done
curl -s -o /dev/null -w "warm-up check: %{http_code}\n" -H "Authorization: Bearer $TOKEN" -H "X-Required-Scopes: orders:read" http://127.0.0.1:18081/check
# ROUNDS=N alternates the trivial server and `/check` N times at each of
# wrk's two concurrencies (-t2 -c64, -t1 -c32) before the other runs.
# Each run also prints the server's CPU time per answer (/proc, in clock ticks of 10 ms).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
user_ticks() { awk '{print $14}' "/proc/$1/stat"; }
measured() { # PID, then wrk's arguments
  local pid=$1 before user out requests; shift
  before=$(ticks "$pid"); user=$(user_ticks "$pid")
  out=$( { /usr/bin/time -f "wrk CPU %U %S" wrk "$@"; } 2>&1)
  echo "$out" | grep -E "Requests/sec|  50%|  99%|Non-2xx"
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  echo "server CPU: $(( ($(ticks "$pid") - before) * 10000000 / requests )) ns per answer" \
    "(user $(( ($(user_ticks "$pid") - user) * 10000000 / requests )) ns);" \
    "wrk CPU: $(echo "$out" | awk -v n="$requests" '/wrk CPU/ {printf "%d", ($3 + $4) * 1e9 / n}') ns per answer"
}
for round in $(seq "${ROUNDS:-1}"); do
  for load in "-t2 -c64" "-t1 -c32"; do
    echo "== round $round, $load: hello"
    measured "$HELLO" $load -d10s --latency http://127.0.0.1:18080/
    echo "== round $round, $load: sidecar /check"
    # PERF=FILE records the sidecar's profile (perf record -g) during the first of these runs.
    if [ -n "${PERF:-}" ] && [ "$round" = 1 ] && [ "$load" = "-t2 -c64" ]; then
      perf record -F 999 --call-graph "${PERF_CALL_GRAPH:-fp}" -p "$SC" -o "$PERF" -- sleep "${PERF_SECONDS:-8}" >/dev/null 2>&1 &
      PERF_PID=$!
    fi
    measured "$SC" $load -d10s --latency -H "Authorization: Bearer $TOKEN" -H "X-Required-Scopes: orders:read" http://127.0.0.1:18081/check
    if [ -n "${PERF_PID:-}" ]; then wait "$PERF_PID"; PERF_PID=; fi
  done
done
if [ "${ROLES:-1}" = 1 ]; then
  curl -s -o /dev/null -w "warm-up /check/orders: %{http_code}\n" -H "Authorization: Bearer $ROLE_TOKEN" http://127.0.0.1:18081/check/orders
  echo "== sidecar /check/orders, a role-holding key and a permission query"
  wrk -t2 -c64 -d10s --latency -H "Authorization: Bearer $ROLE_TOKEN" -H "X-Required-Scopes: orders:read" http://127.0.0.1:18081/check/orders | grep -E "requests in|Requests/sec|  50%|  99%|Non-2xx"
fi
if [ "${CREDITS:-1}" = 1 ]; then
  echo "== sidecar /check, a key with credits"
  wrk -t2 -c64 -d10s --latency -H "Authorization: Bearer $METERED" -H "X-Required-Scopes: orders:read" http://127.0.0.1:18081/check | grep -E "requests in|Requests/sec|  50%|  99%|Non-2xx"
  echo "lease round trips:"; curl -s http://127.0.0.1:18081/metrics | grep -E "^keyplane_sidecar_credit_leases_total" || true
  echo "== sidecar /check, a key with a global rate limit"
  wrk -t2 -c64 -d10s --latency -H "Authorization: Bearer $GLOBAL" -H "X-Required-Scopes: orders:read" http://127.0.0.1:18081/check | grep -E "requests in|Requests/sec|  50%|  99%|Non-2xx"
  echo "lease round trips:"; curl -s http://127.0.0.1:18081/metrics | grep -E "^keyplane_sidecar_request_leases_total" || true
fi
if [ "${IDENTITY:-1}" = 1 ]; then
  echo "== sidecar /check, a key with credits of an identity with credits and a global rate limit"
  wrk -t2 -c64 -d10s --latency -H "Authorization: Bearer $OF_IDENTITY" -H "X-Required-Scopes: orders:read" http://127.0.0.1:18081/check | grep -E "requests in|Requests/sec|  50%|  99%|Non-2xx"
fi
if [ "${FLOOD:-1}" = 1 ]; then
  # Refused checks: a token that names no key (401), and how many log lines they cost.
  echo "== sidecar /check, a flood of bad tokens"
  before=$(grep -c "authentication failed" "$DATA/sidecar.log" || true)
  wrk -t2 -c64 -d10s --latency -H "Authorization: Bearer kp_live_garbage" http://127.0.0.1:18081/check | grep -E "requests in|Requests/sec|  50%|  99%"
  echo "log lines written: $(( $(grep -c "authentication failed" "$DATA/sidecar.log" || true) - before ))"
fi
echo "== hello again"; wrk -t2 -c64 -d10s --latency http://127.0.0.1:18080/ | grep -E "Requests/sec|  50%|  99%"
