#!/usr/bin/env bash
# test_tpv_run.sh: `./scripts/tpv run` prints the address tpvd really listens on (here a port the
# kernel picks: --listen 127.0.0.1:0), that address answers /healthz, the output to a file has no
# colour codes, and SIGTERM stops the daemon with status 0.  TPVD_BIN (from meson) is the binary
# `run` starts instead of building.
set -euo pipefail
ROOT="${TPV_SOURCE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
: "${TPVD_BIN:?}"
tmp="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; cat "$tmp/out" >&2 || true; exit 1; }

TPVD_LISTEN= TPVD_DATA_DIR= "$ROOT/scripts/tpv" run --listen 127.0.0.1:0 --data-dir "$tmp/data" \
  >"$tmp/out" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q 'listening on http' "$tmp/out" && break; sleep 0.1; done
line=$(grep '==> tpvd listening on' "$tmp/out") || fail "no address line"
url=$(sed -n 's/.*listening on \(http:\/\/[0-9.]*:[0-9]*\) .*/\1/p' <<<"$line")
[[ "$url" =~ ^http://127\.0\.0\.1:[0-9]+$ ]] || fail "address: $line"
[ "${url##*:}" != 0 ] && [ "${url##*:}" != 8080 ] || fail "not the bound port: $line"
curl -fsS "$url/healthz" | grep -q '"ok"' || fail "$url does not answer"
grep -q $'\033' "$tmp/out" && fail "colour codes in a file: $(od -c "$tmp/out" | head -3)"
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
pid=""
[ "$rc" -eq 0 ] || fail "scripts/tpv run exited with $rc on SIGTERM"
echo "scripts/tpv run: all checks passed"
