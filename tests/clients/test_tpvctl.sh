#!/usr/bin/env bash
# test_tpvctl.sh: the real tpvctl binary against the real tpvd (started here on 127.0.0.1:0):
# study create (JSON and key=value noise models), inputs put, candidate add twice with the same
# weights (the second upload is skipped), job wait, ranking (table and --json), jbr --wait, and the
# exit codes scripts rely on: 1 server error, 2 usage, 3 unreachable or response over
# --max-response, 4 job failed.
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

for j in "$job1" "$job2"; do
  expect_rc 0 "$T" job wait "$j" --timeout 120
  grep -q succeeded "$tmp/out" || fail "job $j: $(cat "$tmp/out")"
done

# Ranking: a table with the candidates, and JSON.
expect_rc 0 "$T" ranking "$sid" --split probe
for name in first second third; do grep -q "$name" "$tmp/out" || fail "ranking table lacks $name"; done
expect_rc 0 "$T" --json ranking "$sid" --by q8
/usr/bin/env python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["by"]=="q8" and len(r["items"])==3, r' "$tmp/out" \
  || fail "ranking --json: $(cat "$tmp/out")"

# JBR of a classifier candidate.
cid=$("$T" --json candidate list "$sid" | sed -n 's/.*"id": "\(cd_[0-9a-f]*\)".*/\1/p' | head -1)
[[ "$cid" == cd_* ]] || fail "candidate id: $cid"
expect_rc 0 "$T" jbr "$sid" "$cid" --wait --timeout 120

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

kill -TERM "$daemon"
rc=0; wait "$daemon" || rc=$?
daemon=
[ "$rc" -eq 0 ] || fail "tpvd exited with $rc on SIGTERM"
echo "tpvctl: all checks passed"
