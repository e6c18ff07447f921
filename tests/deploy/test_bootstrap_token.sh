#!/usr/bin/env bash
# test_bootstrap_token.sh: a fresh container on a public bind, as `docker run -p 8080:8080 tpvd`
# starts it: --bootstrap-token-file (TPVD_BOOTSTRAP_TOKEN_FILE) gives the empty data dir its
# first admin token, so the daemon starts on 0.0.0.0 and answers that token; without the file it
# refuses to start; once a token exists the file is ignored (a revoked bootstrap token stays
# revoked); a malformed file stops the start with a message naming the option.
# Needs TPVD_BIN.  Connects to the daemon on 127.0.0.1 only.
set -euo pipefail
TPVD="${TPVD_BIN:?}"
tmp="$(mktemp -d)"
daemon=""
stop() { if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; daemon=""; fi; }
trap 'stop; rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$tmp/log" ] && tail -5 "$tmp/log" >&2; exit 1; }
passed=0
pass() { echo "ok   $*"; passed=$((passed + 1)); }

start() { # start [ENV=VALUE...]: tpvd on 0.0.0.0:0 with the data dir of this test
  rm -f "$tmp/port"
  env "$@" "$TPVD" --listen 0.0.0.0:0 --data-dir "$tmp/data" --port-file "$tmp/port" \
    2> "$tmp/log" &
  daemon=$!
  for _ in $(seq 200); do [ -s "$tmp/port" ] && break; kill -0 "$daemon" 2>/dev/null || break; sleep 0.05; done
  if [ -s "$tmp/port" ]; then B="http://127.0.0.1:$(cat "$tmp/port")"; fi
}
status() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

# No token, no file: a public bind is refused.
start TPVD_BOOTSTRAP_TOKEN_FILE=
wait "$daemon" && fail "tpvd served 0.0.0.0 without any token" || true
daemon=""
grep -q "without an API token" "$tmp/log" || fail "the refusal does not say why"
pass "a public bind without a token is refused"

# A malformed file: refused, naming the option.
printf 'short\n' > "$tmp/bad"
start TPVD_BOOTSTRAP_TOKEN_FILE="$tmp/bad"
wait "$daemon" && fail "tpvd started with a malformed bootstrap token file" || true
daemon=""
grep -q "bootstrap-token-file" "$tmp/log" || fail "the refusal does not name --bootstrap-token-file"
pass "a malformed token file stops the start, naming the option"

# The file: the daemon starts and the token is an admin token.
tok="tpv_$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$tok" > "$tmp/token"
start TPVD_BOOTSTRAP_TOKEN_FILE="$tmp/token"
[ -s "$tmp/port" ] || fail "tpvd did not start with a bootstrap token"
[ "$(status "$B/v1/studies")" = 401 ] || fail "a request without the token was not refused"
[ "$(status -H "Authorization: Bearer $tok" "$B/v1/studies")" = 200 ] || fail "the token is not accepted"
[ "$(status -H "Authorization: Bearer $tok" "$B/v1/tokens")" = 200 ] || fail "the token is not admin"
pass "the bootstrap token opens the API with the admin role"

# Revoked, then a restart with another file: ignored, the revocation holds.
[ "$(status -X DELETE -H "Authorization: Bearer $tok" "$B/v1/tokens/bootstrap")" = 200 ] ||
  fail "cannot revoke the bootstrap token"
admin=$("$TPVD" token create --name ops --role admin --data-dir "$tmp/data")
stop
printf '%s\n' "tpv_$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$tmp/token2"
start TPVD_BOOTSTRAP_TOKEN_FILE="$tmp/token2"
[ -s "$tmp/port" ] || fail "tpvd did not restart"
grep -q "bootstrap-token-file ignored" "$tmp/log" || fail "no word that the file was ignored"
[ "$(status -H "Authorization: Bearer $(cat "$tmp/token2")" "$B/v1/studies")" = 401 ] ||
  fail "a bootstrap file was used although tokens exist"
[ "$(status -H "Authorization: Bearer $tok" "$B/v1/studies")" = 401 ] || fail "the revoked token came back"
[ "$(status -H "Authorization: Bearer $admin" "$B/v1/studies")" = 200 ] || fail "the real token fails"
pass "once tokens exist the file is ignored and a revocation holds"
stop
echo "$passed passed, 0 failed"
