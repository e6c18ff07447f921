#!/usr/bin/env bash
# bench_http.sh [BUILD_DIR] [SECONDS]: HTTP throughput of tpvd with wrk (64 connections, 2 threads):
#   1. GET /healthz                                   (the ceiling: a tiny static JSON body)
#   2. GET /v1/studies/{sid}/ranking of 200 candidates (one query + JSON of 200 items)
#   3. the same with If-None-Match of the current ETag (what polling dashboards send)
#   4. the ranking with Accept-Encoding: gzip (what browsers, the Python client and tpvctl send)
# in the same run, and reports the ranking/healthz requests-per-second ratio (target >= 0.5),
# for the identity body and for the gzip one (checking that every answer of run 4 was gzip'd),
# the ranking p99 latency (target < 10 ms), and the 304 requests-per-second over /healthz's
# (target >= 0.8), checking that every answer of run 3 was a 304.
# Needs wrk, curl and python3.  Appends nothing by itself: copy the summary to bench/RESULTS.md.
# BENCH_DATABASE=postgresql://... runs tpvd on that database (--database, and --blob-dir in the
# run's temp dir) instead of SQLite in its data dir (bench/bench_pg.sh runs both).
# BENCH_AUTH=1 creates tokens first (tpvd token create) and sends a read token with every
# measured request (a write token for the set-up), to measure the cost of access control.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
SECS="${2:-10}"
TPVD="$BUILD/server/tpvd"
for tool in wrk curl python3; do
  command -v "$tool" >/dev/null || { echo "bench_http.sh: $tool is missing" >&2; exit 2; }
done
[ -x "$TPVD" ] || { echo "bench_http.sh: no $TPVD (build first)" >&2; exit 2; }

WORK="$(mktemp -d /tmp/tpvd-bench-XXXXXX)"
PID=""
cleanup() {
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

AUTH_W=() AUTH_R=() DB_ARGS=()
if [ -n "${BENCH_DATABASE:-}" ]; then
  DB_ARGS=(--database "$BENCH_DATABASE" --blob-dir "$WORK/blobs")
fi
if [ "${BENCH_AUTH:-0}" = 1 ]; then
  W=$("$TPVD" token create --name bench-w --role write --data-dir "$WORK/data" "${DB_ARGS[@]}" 2>/dev/null)
  R=$("$TPVD" token create --name bench-r --role read --data-dir "$WORK/data" "${DB_ARGS[@]}" 2>/dev/null)
  AUTH_W=(-H "Authorization: Bearer $W") AUTH_R=(-H "Authorization: Bearer $R")
fi

"$TPVD" --listen 127.0.0.1:0 --data-dir "$WORK/data" --port-file "$WORK/port" "${DB_ARGS[@]}" \
  --workers 1 --http-threads 2 --log-level warn >"$WORK/log" 2>&1 &
PID=$!
for _ in $(seq 100); do [ -s "$WORK/port" ] && break; sleep 0.05; done
BASE="http://127.0.0.1:$(cat "$WORK/port")"

# A small (n=16, p=64) float64 Jacobian dump, one per candidate (scaled), as .npy.
python3 - "$WORK" <<'PY'
import struct, sys
work = sys.argv[1]
n, p = 16, 64
hdr = "{'descr': '<f8', 'fortran_order': False, 'shape': (%d, %d), }" % (n, p)
pad = 64 - (10 + len(hdr) + 1) % 64
hdr = hdr + " " * pad + "\n"
for c in range(200):
    vals = [((i * 31 + j * 17 + c * 7) % 101) / 100.0 * (1 + c / 200.0) for i in range(n) for j in range(p)]
    with open("%s/d%03d.npy" % (work, c), "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode())
        f.write(struct.pack("<%dd" % len(vals), *vals))
PY

json() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(eval("d"+sys.argv[1]))' "$1"; }
SID=$(curl -sf "${AUTH_W[@]}" -H 'Content-Type: application/json' -X POST "$BASE/v1/studies" -d '{"name":"bench","noise_models":[{"name":"iso","kind":"isotropic","sigma":0.1},{"name":"sgd","kind":"sgd","lr":0.1,"batch_size":32}]}' | json '["id"]')
for c in $(seq -w 0 199); do
  D=$(curl -sf "${AUTH_W[@]}" -X PUT --data-binary @"$WORK/d$c.npy" "$BASE/v1/blobs" | json '["digest"]')
  curl -sf "${AUTH_W[@]}" -H 'Content-Type: application/json' -o /dev/null \
    -X POST "$BASE/v1/studies/$SID/candidates" \
    -d "{\"name\":\"c$c\",\"metadata\":{\"train_loss\":0.$c,\"run\":\"r$((10#$c % 4))\",\"epoch\":$((10#$c / 4))},\"jacobian\":{\"fit\":\"$D\"}}"
done
RANK="$BASE/v1/studies/$SID/ranking?split=fit"
for _ in $(seq 600); do
  PENDING=$(curl -sf "${AUTH_R[@]}" "$RANK" | json '["pending"].__len__()')
  [ "$PENDING" = 0 ] && break
  sleep 0.1
done
ITEMS=$(curl -sf "${AUTH_R[@]}" "$RANK" | json '["items"].__len__()')
BYTES=$(curl -sf "${AUTH_R[@]}" "$RANK" | wc -c)
GZBYTES=$(curl -sf "${AUTH_R[@]}" -H 'Accept-Encoding: gzip' "$RANK" | wc -c)
ETAG=$(curl -sfI "${AUTH_R[@]}" "$RANK" | tr -d '\r' | awk -F': ' 'tolower($1)=="etag"{print $2}')

cat >"$WORK/count.lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) c304 = 0; cgz = 0; call = 0 end
function response(status, headers, body)
  call = call + 1
  if status == 304 then c304 = c304 + 1 end
  if status == 200 and headers["Content-Encoding"] == "gzip" then cgz = cgz + 1 end
end
function done(summary, latency, requests)
  local a, g, b = 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("c304"); g = g + t:get("cgz"); b = b + t:get("call") end
  io.write(string.format("STATUS304 %d %d\n", a, b))
  io.write(string.format("GZIP200 %d %d\n", g, b))
end
LUA

# tpvd's CPU time so far (user + system, in clock ticks): wrk runs on the same cores, and a large
# body costs wrk's parser as much as the server's send, so the req/s ratios mix client and server;
# CPU per request is the server's side alone.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
run() { # run NAME URL [wrk args...]
  local name="$1" url="$2"; shift 2
  local t0; t0=$(cpu_ticks)
  wrk -t2 -c64 -d"${SECS}s" --latency "${AUTH_R[@]}" "$@" "$url" >"$WORK/$name.txt"
  RPS=$(awk '/Requests\/sec/{print $2}' "$WORK/$name.txt")
  P99=$(awk '$1=="99%"{print $2}' "$WORK/$name.txt")
  local reqs; reqs=$(awk '/requests in/{print $1}' "$WORK/$name.txt")
  CPU_US=$(awk -v t="$(( $(cpu_ticks) - t0 ))" -v hz="$(getconf CLK_TCK)" -v n="$reqs" \
    'BEGIN{printf "%.1f", (n>0)? t/hz*1e6/n : 0}')
  echo "$name rps=$RPS p99=$P99 tpvd_cpu_us_per_request=$CPU_US"
}
to_ms() { # wrk latency "1.23ms" / "512.00us" / "1.01s" -> ms
  awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v} else {sub(/s$/,"",v); print v*1000} }'
}

echo "tpvd $("$TPVD" --version | awk '{print $2}'), backend=$([ -n "${BENCH_DATABASE:-}" ] && echo postgresql || echo sqlite), auth=${BENCH_AUTH:-0}, $(nproc) cores, study of $ITEMS ranked candidates ($BYTES-byte body, $GZBYTES gzip'd), wrk -t2 -c64 -d${SECS}s"
run healthz "$BASE/healthz";               H_RPS=$RPS; H_P99=$P99; H_CPU=$CPU_US
run ranking "$RANK";                       R_RPS=$RPS; R_P99=$P99; R_CPU=$CPU_US
run ranking304 "$RANK" -H "If-None-Match: $ETAG" -s "$WORK/count.lua"; N_RPS=$RPS; N_P99=$P99; N_CPU=$CPU_US
run ranking_gzip "$RANK" -H "Accept-Encoding: gzip" -s "$WORK/count.lua"; G_RPS=$RPS; G_P99=$P99; G_CPU=$CPU_US
read -r C304 CALLS < <(awk '/^STATUS304/{print $2, $3}' "$WORK/ranking304.txt")
read -r CGZ GCALLS < <(awk '/^GZIP200/{print $2, $3}' "$WORK/ranking_gzip.txt")
GZSHARE=$(awk -v a="$CGZ" -v b="$GCALLS" 'BEGIN{printf "%.3f", (b>0)?a/b:0}')
GZRATIO=$(awk -v a="$G_RPS" -v b="$H_RPS" 'BEGIN{printf "%.2f", a/b}')
RATIO=$(awk -v a="$R_RPS" -v b="$H_RPS" 'BEGIN{printf "%.2f", a/b}')
SHARE=$(awk -v a="$C304" -v b="$CALLS" 'BEGIN{printf "%.3f", (b>0)?a/b:0}')
RATIO304=$(awk -v a="$N_RPS" -v b="$H_RPS" 'BEGIN{printf "%.2f", a/b}')
R_P99_MS=$(to_ms "$R_P99")
echo
echo "| run | req/s | p99 | tpvd CPU us/request |"
echo "|---|---|---|---|"
echo "| GET /healthz | $H_RPS | $H_P99 | $H_CPU |"
echo "| GET ranking (200 candidates, 200 OK) | $R_RPS | $R_P99 | $R_CPU |"
echo "| GET ranking with If-None-Match (304) | $N_RPS | $N_P99 | $N_CPU |"
echo "| GET ranking, Accept-Encoding: gzip (200 OK) | $G_RPS | $G_P99 | $G_CPU |"
echo
echo "ranking/healthz rps ratio: $RATIO identity, $GZRATIO gzip (target >= 0.5)"
echo "ranking p99: ${R_P99_MS} ms (target < 10 ms)"
echo "tpvd CPU per request, healthz/ranking (the server's own capacity ratio): $(awk -v a="$H_CPU" -v b="$R_CPU" 'BEGIN{printf "%.2f", (b>0)?a/b:0}') identity, $(awk -v a="$H_CPU" -v b="$G_CPU" 'BEGIN{printf "%.2f", (b>0)?a/b:0}') gzip"
echo "304/healthz rps ratio: $RATIO304 (target >= 0.8)"
echo "answers of run 3 that were 304: $SHARE ($C304 of $CALLS; must be 1.000)"
echo "answers of run 4 that were gzip'd 200s: $GZSHARE ($CGZ of $GCALLS; must be 1.000)"
