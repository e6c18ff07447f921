#!/usr/bin/env bash
# test_tpvctl.sh: the real tpvctl binary against the real tpvd (started here on 127.0.0.1:0):
# study create (JSON and key=value noise models), inputs put, candidate add twice with the same
# weights (the second upload is skipped), job wait, ranking (table, --json and --csv against the
# documented header), candidate list with the rank_by score, jbr --wait with its units table,
# blob put (the digest alone on stdout), output flags after the command, short flags, a command
# without its verb (its usage, exit 2), progress bars (none off a terminal, at most 10 frames a
# second on one), and the exit codes scripts rely on: 1 server error, 2 usage, 3 unreachable or
# response over --max-response, 4 job failed; lifecycle (retry, candidate, study and blob delete).
#   TPVD_BIN, TPVCTL_BIN, TPV_SOURCE_ROOT come from meson (tests/clients/meson.build).
set -euo pipefail

ROOT="${TPV_SOURCE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
TPVD="${TPVD_BIN:-$ROOT/build/server/tpvd}"
T="${TPVCTL_BIN:-$ROOT/build/clients/tpvctl}"
Q="$ROOT/examples/quickstart"

tmp="$(mktemp -d)"
daemon=
cleanup() {
  if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; echo "---- tpvd log" >&2; cat "$tmp/tpvd.log" >&2 || true; exit 1; }
# expect_rc WANT CMD...: runs CMD, checks its exit status, keeps stdout/stderr in $tmp/out, err.
expect_rc() {
  local want="$1"; shift
  local rc=0
  "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
  [ "$rc" -eq "$want" ] || fail "exit $rc (want $want): $* -- $(cat "$tmp/out" "$tmp/err")"
}

"$TPVD" --listen 127.0.0.1:0 --port-file "$tmp/port" --data-dir "$tmp/data" --workers 2 \
  >"$tmp/tpvd.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.1; done
[ -s "$tmp/port" ] || fail "tpvd did not start"
export TPV_URL="http://127.0.0.1:$(cat "$tmp/port")"

# Studies: noise models as JSON and as key=value pairs.
expect_rc 0 "$T" study create --name json-form \
  --noise '{"name":"iso","kind":"isotropic","sigma":0.01}' \
  --noise '{"name":"label","kind":"label","sigma":0.1,"ridge_rel":0.05}' --rank-by label
sid_json=$(cat "$tmp/out")
[[ "$sid_json" == st_* ]] || fail "study id: $sid_json"
expect_rc 0 "$T" study create --name kv-form --noise name=iso,kind=isotropic,sigma=0.01 \
  --noise name=q8,kind=quantization,bits=8,scope=per_channel
sid=$(cat "$tmp/out")
expect_rc 0 "$T" --json study get "$sid"
grep -q '"quantization"' "$tmp/out" || fail "key=value noise model not stored: $(cat "$tmp/out")"
grep -q '"label"' <("$T" --json study get "$sid_json") || fail "JSON noise model not stored"

# A webhook: the secret is shown once, on stderr, the id alone on stdout.
expect_rc 0 "$T" study create --name hooked --noise name=iso,kind=isotropic,sigma=0.01 \
  --webhook http://127.0.0.1:9/hook
[[ "$(cat "$tmp/out")" == st_* ]] && [ "$(wc -l <"$tmp/out")" -eq 1 ] || fail "id: $(cat "$tmp/out")"
grep -q 'webhook secret .*whsec_[0-9a-f]\{64\}' "$tmp/err" || fail "no secret: $(cat "$tmp/err")"
expect_rc 1 "$T" study create --name badhook --noise name=iso,kind=isotropic,sigma=0.01 \
  --webhook ftp://example.com/x
grep -q webhook_url "$tmp/err" || fail "bad webhook not named: $(cat "$tmp/err")"

# blob put: stdout is the digest alone, new or already there; the status goes to stderr.
want_digest="sha256:$(sha256sum "$Q/x_fit.npy" | cut -d' ' -f1)"
expect_rc 0 "$T" blob put "$Q/x_fit.npy"
[ "$(cat "$tmp/out")" = "$want_digest" ] || fail "blob put stdout: $(cat "$tmp/out")"
grep -q 'uploaded' "$tmp/err" || fail "blob put status: $(cat "$tmp/err")"
expect_rc 0 "$T" blob put "$Q/x_fit.npy"
[ "$(cat "$tmp/out")" = "$want_digest" ] || fail "blob put of a present blob, stdout: $(cat "$tmp/out")"
grep -q 'already on the server' "$tmp/err" || fail "blob put present status: $(cat "$tmp/err")"
expect_rc 0 "$T" blob put "$Q/x_fit.npy" -q
[ "$(cat "$tmp/out")" = "$want_digest" ] && [ ! -s "$tmp/err" ] || fail "blob put -q: $(cat "$tmp/out" "$tmp/err")"

# A command without its verb (or with a wrong one) prints that command's usage, exit 2.
for g in job study candidate inputs blob; do
  expect_rc 2 "$T" "$g"
  grep -q "unknown command" "$tmp/err" && fail "tpvctl $g: $(cat "$tmp/err")"
  grep -q "^  $g " "$tmp/err" || fail "tpvctl $g does not show its usage: $(cat "$tmp/err")"
done
expect_rc 2 "$T" job frobnicate
grep -q "job wait JID" "$tmp/err" || fail "tpvctl job frobnicate: $(cat "$tmp/err")"
expect_rc 0 "$T" --help
for f in '-n --name' '-w --wait' '-j --json' '-q --quiet' '-s --spec' '-W --weights'; do
  grep -q -- "$f" "$tmp/out" || fail "--help does not document $f"
done

# Output flags after the command mean what they mean before it.
expect_rc 0 "$T" study get "$sid" --json
grep -q '"quantization"' "$tmp/out" || fail "study get --json (after): $(cat "$tmp/out")"
expect_rc 0 "$T" study get "$sid" -j
grep -q '"quantization"' "$tmp/out" || fail "study get -j (after): $(cat "$tmp/out")"

expect_rc 0 "$T" inputs put "$sid" fit "$Q/x_fit.npy"
expect_rc 0 "$T" inputs put "$sid" probe "$Q/x_probe.npy"

# The same weights twice: the second add finds the blobs (HEAD) and uploads nothing.
m="$Q/mlp-w128-d1-wd0"
expect_rc 0 "$T" candidate add "$sid" --name first --train-loss 0.02 \
  --spec "$m/spec.json" --weights "$m/weights.safetensors"
job1=$(cat "$tmp/out")
grep -q 'upload skipped' "$tmp/err" && fail "first upload skipped: $(cat "$tmp/err")"
puts_before=$(grep -c 'method=PUT path=/v1/blobs' "$tmp/tpvd.log" || true)
[ "$puts_before" -ge 2 ] || fail "the daemon log shows no uploads ($puts_before)"
expect_rc 0 "$T" candidate add "$sid" --name second --spec "$m/spec.json" \
  --weights "$m/weights.safetensors"
job2=$(cat "$tmp/out")
grep -q 'weights.safetensors: already on the server' "$tmp/err" || fail "no skip note: $(cat "$tmp/err")"
puts_after=$(grep -c 'method=PUT path=/v1/blobs' "$tmp/tpvd.log" || true)
[ "$puts_before" = "$puts_after" ] || fail "second add uploaded again ($puts_before -> $puts_after)"
m2="$Q/mlp-w128-d1-wd0.1"
expect_rc 0 "$T" --quiet candidate add "$sid" --name third --spec "$m2/spec.json" \
  --weights "$m2/weights.safetensors" --wait
[ -s "$tmp/err" ] && fail "--quiet printed: $(cat "$tmp/err")"
# Short flags, and --quiet after the command (the weights are on the server: no note).
m3="$Q/mlp-w32-d1-wd0"
expect_rc 0 "$T" candidate add "$sid" -n fourth -s "$m3/spec.json" -W "$m3/weights.safetensors" \
  -L 0.03 -e 7 -r r1 -w -T 120
expect_rc 0 "$T" candidate add "$sid" -n fifth -s "$m3/spec.json" -W "$m3/weights.safetensors" \
  -w --quiet
[ -s "$tmp/err" ] && fail "--quiet after the command printed: $(cat "$tmp/err")"
expect_rc 0 "$T" --json candidate list "$sid"
/usr/bin/env python3 -c '
import json, sys
items = {c["name"]: c for c in json.load(open(sys.argv[1]))}
m = items["fourth"]["metadata"]
assert m == {"train_loss": 0.03, "epoch": 7, "run": "r1"}, m
' "$tmp/out" || fail "short flags of candidate add: $(cat "$tmp/out")"

# Progress bars: none when stderr is not a terminal; on one, at most 10 frames a second.
head -c $((48 << 20)) /dev/urandom >"$tmp/big.bin"
expect_rc 0 "$T" blob put "$tmp/big.bin"
grep -q $'\r' "$tmp/err" && fail "a progress bar was drawn on a file: $(od -c "$tmp/err" | head -3)"
head -c $((48 << 20)) /dev/urandom >"$tmp/big.bin"
t0=$(date +%s.%N)
TERM=dumb script -qfec "$T blob put $tmp/big.bin 2>&1 >/dev/null" /dev/null >"$tmp/tty" \
  || fail "blob put on a terminal: $(cat "$tmp/tty")"
t1=$(date +%s.%N)
frames=$(tr -cd '\r' <"$tmp/tty" | wc -c)
/usr/bin/env python3 -c '
import sys
frames, secs = int(sys.argv[1]), float(sys.argv[3]) - float(sys.argv[2])
# 10 a second, plus the first and the last frame (the pty turns each newline into "\r\n").
assert 1 <= frames <= 10 * secs + 3, (frames, secs)
' "$frames" "$t0" "$t1" || fail "progress frames: $frames in $t0..$t1: $(head -c 400 "$tmp/tty" | od -c | head)"

for j in "$job1" "$job2"; do
  expect_rc 0 "$T" job wait "$j" --timeout 120
  grep -q succeeded "$tmp/out" || fail "job $j: $(cat "$tmp/out")"
done

# Ranking: a table with the candidates, and JSON.
expect_rc 0 "$T" ranking "$sid" --split probe
for name in first second third; do grep -q "$name" "$tmp/out" || fail "ranking table lacks $name"; done
expect_rc 0 "$T" --json ranking "$sid" --by q8
/usr/bin/env python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["by"]=="q8" and len(r["items"])==5, r' "$tmp/out" \
  || fail "ranking --json: $(cat "$tmp/out")"
expect_rc 0 "$T" ranking "$sid" -b q8 -s fit --json
cp "$tmp/out" "$tmp/ranking.json"
grep -q '"split": "fit"' "$tmp/ranking.json" || fail "ranking -s fit: $(cat "$tmp/ranking.json")"

# CSV (the server's, or written by tpvctl from the JSON when the server answers JSON): the
# documented header, then the metadata keys, and one row per item with the JSON's values.
expect_rc 0 "$T" ranking "$sid" -b q8 -s fit --csv
/usr/bin/env python3 - "$tmp/out" "$tmp/ranking.json" <<'PY' || fail "ranking --csv: $(cat "$tmp/out")"
import csv, json, sys
rows = list(csv.reader(open(sys.argv[1], newline="")))
r = json.load(open(sys.argv[2]))
fixed = ["rank", "candidate_id", "name", "value", "stderr", "stderr_inputs",
         "p_lower_than_next", "flags"]
meta = sorted({k for it in r["items"] for k in it.get("metadata", {})})
assert rows[0] == fixed + meta, rows[0]
assert meta == ["epoch", "run", "train_loss"], meta
assert len(rows) == 1 + len(r["items"]), len(rows)
for row, it in zip(rows[1:], r["items"]):
    cell = dict(zip(rows[0], row))
    assert int(cell["rank"]) == it["rank"] and cell["candidate_id"] == it["candidate_id"], cell
    assert cell["name"] == it["name"], cell
    assert float(cell["value"]) == it["value"], (cell, it)
    assert float(cell["stderr"]) == it["stderr"], (cell, it)
    for k in ("stderr_inputs", "p_lower_than_next"):
        v = it.get(k)
        assert (cell[k] == "") if v is None else (float(cell[k]) == v), (k, cell, it)
    assert cell["flags"] == ";".join(it.get("flags", [])), cell
    for k in meta:
        v = it.get("metadata", {}).get(k)
        assert cell[k] == ("" if v is None else str(v)), (k, cell, it)
PY

# candidate list shows the score the study ranks by (rank_by iso, probe split) per candidate.
expect_rc 0 "$T" candidate list "$sid"
cp "$tmp/out" "$tmp/list.txt"
expect_rc 0 "$T" candidate list "$sid" --json
/usr/bin/env python3 - "$tmp/list.txt" "$tmp/out" <<'PY' || fail "candidate list: $(cat "$tmp/list.txt")"
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines[0].split() == ["id", "name", "state", "iso/probe"], lines[0]
items = {c["id"]: c for c in json.load(open(sys.argv[2]))}
assert len(lines) == 1 + len(items), lines
for line in lines[1:]:
    cid, name, state, shown = line.split()
    want = [s["value"] for s in items[cid]["scores"] if s["noise"] == "iso" and s["split"] == "probe"]
    assert len(want) == 1 and abs(float(shown) - want[0]) <= 1e-5 * abs(want[0]), (line, want)
PY

# JBR of a classifier candidate.
cid=$("$T" --json candidate list "$sid" | sed -n 's/.*"id": "\(cd_[0-9a-f]*\)".*/\1/p' | head -1)
[[ "$cid" == cd_* ]] || fail "candidate id: $cid"
expect_rc 0 "$T" jbr "$sid" "$cid" --wait --timeout 120
head -1 "$tmp/out" | grep -q '^order *layer *index *score$' || fail "jbr --wait table: $(head -3 "$tmp/out")"
[ "$(wc -l <"$tmp/out")" -ge 2 ] || fail "jbr --wait printed no units: $(cat "$tmp/out")"
expect_rc 0 "$T" jbr "$sid" "$cid" -w -T 120 --json
/usr/bin/env python3 -c '
import json, sys
r = json.load(open(sys.argv[1])); u = r["units"]
assert u and {"layer", "index", "score"} <= set(u[0]) and sorted(r["order"]) == list(range(len(u))), r
scores = [u[i]["score"] for i in r["order"]]
assert scores == sorted(scores), scores
' "$tmp/out" || fail "jbr --wait --json: $(head -c 300 "$tmp/out")"
/usr/bin/env python3 -c '
import json, sys
r = json.load(open(sys.argv[1])); lines = open(sys.argv[2]).read().splitlines()[1:]
assert len(lines) == len(r["units"]), (len(lines), len(r["units"]))
first = r["units"][r["order"][0]]
assert lines[0].split()[1:3] == [first["layer"], str(first["index"])], (lines[0], first)
' "$tmp/out" <("$T" jbr "$sid" "$cid" -w -T 120) || fail "jbr table does not follow the order"

# One response body has a cap: a body exactly at --max-response is read, one byte over ends the
# command (exit 3) with a message naming the cap (every job above has finished: the list is stable).
size=$(/usr/bin/env python3 -c 'import sys, urllib.request; print(len(urllib.request.urlopen(sys.argv[1]).read()))' \
  "$TPV_URL/v1/studies?page_size=100")
[ "$size" -gt 1000 ] || fail "study list is only $size bytes"
expect_rc 0 "$T" --max-response "$size" study list
grep -q json-form "$tmp/out" || fail "study list at the cap: $(cat "$tmp/out")"
expect_rc 3 "$T" --max-response "$((size - 1))" study list
grep -q "larger than the $((size - 1))-byte cap" "$tmp/err" || fail "cap not named: $(cat "$tmp/err")"
expect_rc 2 "$T" --max-response 0 study list

# Exit codes.
expect_rc 1 "$T" study get st_0000000000000000          # 404 from the server
grep -q not_found "$tmp/err" || fail "no server code in: $(cat "$tmp/err")"
expect_rc 1 "$T" study create --name bad --noise name=x,kind=nope
expect_rc 2 "$T" no-such-command
grep -q "unknown command 'no-such-command'" "$tmp/err" || fail "unknown command: $(cat "$tmp/err")"
expect_rc 2 "$T" study create --noise name=iso,kind=isotropic,sigma=0.1   # no --name
TPV_URL=http://127.0.0.1:1 expect_rc 3 "$T" study list
# A job that fails: JBR needs a classifier, and this one-output linear model is not one.
printf '%s' '{"format":"tpv.sequential/v1","input_shape":[1],"layers":[{"type":"linear","weight":"w"}]}' \
  >"$tmp/spec.json"
hdr='{"w":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]}}'
while [ $(( ${#hdr} % 8 )) -ne 0 ]; do hdr+=' '; done
{ printf "$(printf '\\x%02x' "${#hdr}" 0 0 0 0 0 0 0)"; printf '%s' "$hdr"; printf '\x00\x00\x80\x3f'; } \
  >"$tmp/w.safetensors"
npy='{'"'"'descr'"'"': '"'"'<f4'"'"', '"'"'fortran_order'"'"': False, '"'"'shape'"'"': (2, 1), }'
{ printf '\x93NUMPY\x01\x00\x76\x00%s%*s\n' "$npy" $((128 - 10 - ${#npy} - 1)) ''
  printf '\x00\x00\x80\x3f\x00\x00\x00\x40'; } >"$tmp/x.npy"
expect_rc 0 "$T" study create --name onehead --noise name=iso,kind=isotropic,sigma=0.1
sid1=$(cat "$tmp/out")
expect_rc 0 "$T" inputs put "$sid1" fit "$tmp/x.npy"
expect_rc 0 "$T" --quiet candidate add "$sid1" --name lin --spec "$tmp/spec.json" \
  --weights "$tmp/w.safetensors" --wait
cid1=$("$T" --json candidate list "$sid1" | sed -n 's/.*"id": "\(cd_[0-9a-f]*\)".*/\1/p' | head -1)
expect_rc 4 "$T" jbr "$sid1" "$cid1" --wait --timeout 60
grep -q failed "$tmp/err" || fail "jbr failure not reported: $(cat "$tmp/err")"

# An ONNX candidate: y = x w over the same inputs (x = [1, 2], w = 3), so the isotropic TPV is
# sigma^2 / n * sum_x ||dy/dw||^2 = 0.01 * (1 + 4) / 2 = 0.025.
/usr/bin/python3 - "$tmp/lin.onnx" <<'PY'
import sys
import numpy as np
from onnx import TensorProto, helper, numpy_helper
g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "lin",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
                      initializer=[numpy_helper.from_array(np.array([[3.0]], np.float32), "w")])
open(sys.argv[1], "wb").write(helper.make_model(
    g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
PY
expect_rc 0 "$T" --quiet candidate add "$sid1" --name lin_onnx --onnx "$tmp/lin.onnx" \
  --parameters w --wait
cid2=$("$T" --json candidate list "$sid1" | /usr/bin/env python3 -c \
  'import json,sys; print([c["id"] for c in json.load(sys.stdin) if c["name"]=="lin_onnx"][0])')
"$T" --json candidate get "$sid1" "$cid2" >"$tmp/cand.json" || fail "candidate get $cid2"
/usr/bin/env python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); s=c["scores"][0]
assert c["source"]=="onnx" and abs(s["value"]-0.025) <= 1e-7, c' "$tmp/cand.json" \
  || fail "onnx candidate: $(cat "$tmp/cand.json")"
expect_rc 1 "$T" candidate add "$sid1" --name bad_onnx --onnx "$tmp/lin.onnx" --parameters nope
grep -q "model.parameters" "$tmp/err" || fail "no field in: $(cat "$tmp/err")"
expect_rc 2 "$T" candidate add "$sid1" --name both --onnx "$tmp/lin.onnx" --spec "$tmp/spec.json"
expect_rc 2 "$T" candidate add "$sid1" --name p --spec "$tmp/spec.json" --weights "$tmp/w.safetensors" \
  --parameters w

# Metrics and the agreement report: key=value and --json FILE, the merged metrics printed, the
# table showing the JSON report's numbers and its recommendation, refusals with their codes.
"$T" --json candidate list "$sid" >"$tmp/cands.json"
mapfile -t cids < <(/usr/bin/env python3 -c 'import json,sys; [print(c["id"]) for c in json.load(open(sys.argv[1]))]' "$tmp/cands.json")
[ "${#cids[@]}" -eq 5 ] || fail "five candidates: ${cids[*]}"
expect_rc 0 "$T" metrics put "$sid" "${cids[0]}" val_loss=0.5 acc=0.9
[ "$(cat "$tmp/out")" = $'acc=0.9\nval_loss=0.5' ] || fail "metrics put: $(cat "$tmp/out")"
expect_rc 0 "$T" metrics put "$sid" "${cids[0]}" acc=null
[ "$(cat "$tmp/out")" = "val_loss=0.5" ] || fail "metrics put null: $(cat "$tmp/out")"
for i in 1 2 3 4; do
  printf '{"val_loss": %s}' "0.$((9 - i))" >"$tmp/m$i.json"
  expect_rc 0 "$T" metrics put "$sid" "${cids[$i]}" --json "$tmp/m$i.json"
  [ "$(cat "$tmp/out")" = "val_loss=0.$((9 - i))" ] || fail "metrics put --json: $(cat "$tmp/out")"
done
expect_rc 0 "$T" metrics put "$sid" "${cids[1]}" val_loss=0.8 --json   # output flag after KEY=VALUE
grep -q '"val_loss": 0.8' "$tmp/out" || fail "metrics put ... --json output: $(cat "$tmp/out")"
expect_rc 2 "$T" metrics put "$sid" "${cids[1]}" val_loss=abc
expect_rc 2 "$T" metrics put "$sid" "${cids[1]}" novalue
expect_rc 6 "$T" metrics put "$sid" "${cids[1]}" --json "$tmp/no-such-file.json"
expect_rc 1 "$T" metrics put "$sid" cd_0000000000000000 val_loss=1
grep -q not_found "$tmp/err" || fail "metrics put 404: $(cat "$tmp/err")"
expect_rc 2 "$T" metrics
grep -q "^  metrics put" "$tmp/err" || fail "tpvctl metrics usage: $(cat "$tmp/err")"
expect_rc 2 "$T" agreement "$sid"                     # no --metric
expect_rc 1 "$T" agreement "$sid" -m val_los
grep -q "val_loss" "$tmp/err" || fail "agreement of an unknown metric: $(cat "$tmp/err")"
expect_rc 0 "$T" agreement "$sid" --metric val_loss --json
cp "$tmp/out" "$tmp/agree.json"
expect_rc 0 "$T" agreement "$sid" -m val_loss
/usr/bin/env python3 - "$tmp/out" "$tmp/agree.json" <<'PY' || fail "agreement table: $(cat "$tmp/out")"
import json, sys
lines = open(sys.argv[1]).read().splitlines()
r = json.load(open(sys.argv[2]))
assert r["metric"] == "val_loss" and r["candidates_with_metric"] == 5, r
assert lines[0] == "metric val_loss: 5 of 5 candidates have it", lines[0]
assert lines[1].split() == ["noise", "split", "n", "spearman", "kendall", "95%", "interval"], lines[1]
rows = lines[2:2 + len(r["items"])]
assert len(r["items"]) == 4, r["items"]          # iso and q8, each on fit and probe
for row, it in zip(rows, r["items"]):
    f = row.replace("[", " ").replace("]", " ").replace(",", " ").split()
    assert f[0] == it["noise"] and f[1] == it["split"] and int(f[2]) == it["n"] == 5, (row, it)
    assert abs(float(f[3]) - it["spearman"]) <= 5e-4 and abs(float(f[4]) - it["kendall"]) <= 5e-4, (row, it)
    assert abs(float(f[5]) - it["ci"][0]) <= 5e-4 and abs(float(f[6]) - it["ci"][1]) <= 5e-4, (row, it)
rec = r["recommended"]
last = lines[2 + len(r["items"])]
if rec:
    assert last.startswith("recommended: rank by %s on %s" % (rec["noise"], rec["split"])), last
else:
    assert last.startswith("recommended: none"), last
PY

# Lifecycle: retry a failed candidate (a NaN in its dump), refuse to retry a succeeded one,
# blob delete refused while used (exit 1 naming the user), candidate and study delete.
/usr/bin/env python3 - "$tmp" <<'PY'
import struct, sys
def npy(path, vals):
    hdr = "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 3), }"
    hdr += " " * (64 - (10 + len(hdr) + 1) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode())
        f.write(struct.pack("<12d", *vals))
npy(sys.argv[1] + "/good.npy", [0.1 * i for i in range(12)])
npy(sys.argv[1] + "/bad.npy", [1.0] * 7 + [float("nan")] + [1.0] * 4)
PY
expect_rc 0 "$T" study create -n life -m name=iso,kind=isotropic,sigma=0.01
sid_life=$(cat "$tmp/out")
expect_rc 0 "$T" candidate add "$sid_life" -n ok -f "$tmp/good.npy" -w
expect_rc 4 "$T" candidate add "$sid_life" -n broken -f "$tmp/bad.npy" -w
cid_of() { "$T" --json candidate list "$1" | /usr/bin/env python3 -c \
  'import json,sys; print([c["id"] for c in json.load(sys.stdin) if c["name"]==sys.argv[1]][0])' "$2"; }
cid_ok=$(cid_of "$sid_life" ok); cid_broken=$(cid_of "$sid_life" broken)
expect_rc 0 "$T" candidate retry "$sid_life" "$cid_broken"
[[ "$(cat "$tmp/out")" == jb_* ]] || fail "retry prints the new job id: $(cat "$tmp/out")"
expect_rc 4 "$T" job wait "$(cat "$tmp/out")"
expect_rc 4 "$T" candidate retry "$sid_life" "$cid_broken" -w
expect_rc 1 "$T" candidate retry "$sid_life" "$cid_ok"
grep -q 'failed_precondition' "$tmp/err" || fail "retry of a succeeded candidate: $(cat "$tmp/err")"
good_digest="sha256:$(sha256sum "$tmp/good.npy" | cut -d' ' -f1)"
expect_rc 1 "$T" blob delete "$good_digest"
grep -q "$cid_ok" "$tmp/err" || fail "blob delete in use does not name the candidate: $(cat "$tmp/err")"
expect_rc 0 "$T" candidate delete "$sid_life" "$cid_ok"
expect_rc 1 "$T" candidate get "$sid_life" "$cid_ok"
grep -q 'not_found' "$tmp/err" || fail "deleted candidate: $(cat "$tmp/err")"
expect_rc 0 "$T" blob delete "$good_digest"
expect_rc 1 "$T" blob delete "$good_digest"
expect_rc 0 "$T" study delete "$sid_life"
expect_rc 1 "$T" study get "$sid_life"
expect_rc 2 "$T" candidate delete "$sid_life"

kill -TERM "$daemon"
rc=0; wait "$daemon" || rc=$?
daemon=
[ "$rc" -eq 0 ] || fail "tpvd exited with $rc on SIGTERM"
echo "tpvctl: all checks passed"
