#!/usr/bin/env bash
# bench_pg.sh [BUILD_DIR] [SECONDS] [JOBS]: the PostgreSQL backend against SQLite, in one run
# (issue #13's performance targets; run by hand, never in CI):
#   1. bench_http.sh on SQLite, then on a PostgreSQL started by tests/support/pg_server.sh: GET
#      ranking of 200 candidates and its 304 (If-None-Match) as ratios of /healthz req/s, each
#      ratio against the /healthz of the same daemon in the same run (SECONDS per wrk run);
#   2. job claim-to-start with three tpvd nodes (--workers 1 each) on that one database: JOBS
#      candidates created one at a time, round-robin over the nodes, each waited for until its
#      job ends, so that every job meets three idle, competing workers.  Per job the client reads
#      created_at, started_at, finished_at (GET /v1/jobs/{jid}) and reports the median and p90 of
#      started_at - created_at (the candidate's insert commit, the NOTIFY to every node, the
#      wake-up of each node's worker and the claim transaction up to its timestamp; three
#      claimers race for one row, SKIP LOCKED lets one win) and of finished_at - created_at
#      (adds the claim's UPDATE, the run of a 16x64 score job and its finish), both in ms at the
#      timestamps' 1 ms resolution.
# BENCH_PG_CLAIMS_ONLY=1 runs part 2 only.  The set-up of part 1 (200 uploads and candidates
# through curl) takes minutes on a loaded machine.
# Needs wrk, curl, python3 and Debian's postgresql 15 (what pg_server.sh needs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${1:-$ROOT/build}"
SECS="${2:-8}"
JOBS="${3:-60}"
TPVD="$BUILD/server/tpvd"
[ -x "$TPVD" ] || { echo "bench_pg.sh: no $TPVD (build first)" >&2; exit 2; }

WORK="$(mktemp -d /tmp/tpvd-benchpg-XXXXXX)"
URI="" PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -z "$URI" ] || "$ROOT/tests/support/pg_server.sh" stop "$URI" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
URI="$("$ROOT/tests/support/pg_server.sh" start)"

if [ "${BENCH_PG_CLAIMS_ONLY:-0}" != 1 ]; then # =1: only part 2
  echo "== SQLite"
  "$ROOT/bench/bench_http.sh" "$BUILD" "$SECS"
  echo
  echo "== PostgreSQL 15 ($URI)"
  BENCH_DATABASE="$URI" "$ROOT/bench/bench_http.sh" "$BUILD" "$SECS"
  echo
  echo "load average after the HTTP runs: $(cut -d' ' -f1-3 /proc/loadavg)"
fi

echo "== claim-to-start, three nodes on one PostgreSQL, $JOBS jobs"
for i in 1 2 3; do
  "$TPVD" --listen 127.0.0.1:0 --data-dir "$WORK/n$i" --port-file "$WORK/port$i" \
    --database "$URI" --blob-dir "$WORK/blobs" --workers 1 --http-threads 1 \
    --log-level warn >"$WORK/log$i" 2>&1 &
  PIDS+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 200); do [ -s "$WORK/port$i" ] && break; sleep 0.05; done
  [ -s "$WORK/port$i" ] || { cat "$WORK/log$i" >&2; echo "bench_pg.sh: node $i did not start" >&2; exit 1; }
done

python3 - "$JOBS" "$(cat "$WORK/port1")" "$(cat "$WORK/port2")" "$(cat "$WORK/port3")" <<'PY'
import datetime, json, statistics, struct, sys, time, urllib.request

jobs, ports = int(sys.argv[1]), sys.argv[2:]
bases = ["http://127.0.0.1:%s" % p for p in ports]

def call(method, url, body=None, ctype="application/json"):
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.headers, json.loads(r.read() or b"null")

n, p = 16, 64
hdr = "{'descr': '<f8', 'fortran_order': False, 'shape': (%d, %d), }" % (n, p)
hdr += " " * (64 - (10 + len(hdr) + 1) % 64) + "\n"
vals = [((i * 31 + j * 17) % 101) / 100.0 for i in range(n) for j in range(p)]
npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + struct.pack("<%dd" % len(vals), *vals)
_, blob = call("PUT", bases[0] + "/v1/blobs", npy, "application/octet-stream")
_, study = call("POST", bases[0] + "/v1/studies", json.dumps({"name": "claims", "noise_models": [
    {"name": "iso", "kind": "isotropic", "sigma": 0.1}]}).encode())

def ts(s):
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()

start, finish, states = [], [], {}
for k in range(jobs):
    base = bases[k % 3]
    _, cand = call("POST", "%s/v1/studies/%s/candidates" % (base, study["id"]),
                json.dumps({"name": "c%d" % k, "metadata": {"train_loss": k / 1000},
                            "jacobian": {"fit": blob["digest"]}}).encode())
    loc = "/v1/jobs/" + cand["job"]["id"]
    for _ in range(6000):  # polled, not wait=: a held request would be a fourth claimer's load
        _, j = call("GET", base + loc)
        if j["state"] in ("succeeded", "failed", "canceled"):
            break
        time.sleep(0.005)
    if "started_at" not in j:
        sys.exit("unexpected job answer: %s" % json.dumps(j)[:300])
    states[j["state"]] = states.get(j["state"], 0) + 1
    c = ts(j["created_at"])
    start.append((ts(j["started_at"]) - c) * 1000)
    finish.append((ts(j["finished_at"]) - c) * 1000)

def q(xs, f):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(f * len(xs)))]

print("job states:", states)
print("| claim-to-start, %d jobs, 3 nodes | median ms | p90 ms | max ms |" % jobs)
print("|---|---|---|---|")
for name, xs in (("started_at - created_at", start), ("finished_at - created_at", finish)):
    print("| %s | %.1f | %.1f | %.1f |" % (name, statistics.median(xs), q(xs, 0.9), max(xs)))
PY
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
