#!/usr/bin/env bash
# Starts the emulator on a free loopback port, calls it with the unmodified AWS CLI, shows what it
# accepted, and stops it. No AWS account is involved: every request goes to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
work=$(mktemp -d)
trap 'kill "$emu" 2>/dev/null || true; wait "$emu" 2>/dev/null || true; rm -rf "$work"' EXIT

"$BIN/metering-sidecar" emulator --port 0 --product-code demo-product-code --dimension requests \
  --public-key-out "$work/public.pem" >"$work/out" 2>"$work/log" &
emu=$!
for _ in $(seq 50); do grep -q listening "$work/out" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/out" | head -1)
[ -n "$url" ] || { echo "the emulator did not start:"; cat "$work/log"; exit 1; }
head -1 "$work/out"

export AWS_ENDPOINT_URL_MARKETPLACE_METERING="$url" AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_CONTAINER_CREDENTIALS_FULL_URI="$url/_emulator/credentials" AWS_CONTAINER_AUTHORIZATION_TOKEN=demo-pod
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE

echo; echo "\$ aws meteringmarketplace register-usage --product-code demo-product-code --public-key-version 1 --nonce demo-nonce"
"$BIN/aws" meteringmarketplace register-usage --product-code demo-product-code --public-key-version 1 --nonce demo-nonce \
  --query Signature --output text | cut -c1-72 | sed 's/$/...  (a PS256 JWT)/'
now=$(date +%s)
echo; echo "\$ aws meteringmarketplace meter-usage --product-code demo-product-code --usage-dimension requests --usage-quantity 42 --timestamp $now"
"$BIN/aws" meteringmarketplace meter-usage --product-code demo-product-code --usage-dimension requests --usage-quantity 42 --timestamp "$now"
echo; echo "\$ aws meteringmarketplace meter-usage ... --usage-quantity 43   (same hour, different quantity)"
"$BIN/aws" meteringmarketplace meter-usage --product-code demo-product-code --usage-dimension requests --usage-quantity 43 --timestamp "$now" 2>&1 || true
echo; echo "The emulator's log:"; cat "$work/log"
echo; echo "Accepted records (GET $url/_emulator/records):"
"$BIN/python" - "$url" <<'PY'
import json, sys, urllib.request
for r in json.load(urllib.request.urlopen(sys.argv[1] + "/_emulator/records"))["records"]:
    print(f"  {r['operation']} dimension={r['dimension']} quantity={r['quantity']} record={r['metering_record_id']}")
PY
