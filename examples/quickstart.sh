#!/usr/bin/env bash
# quickstart.sh: rank six pre-exported MLPs of a small sweep by TPV, without labels, in a minute.
#
#   ./examples/quickstart.sh            uses the daemon at $TPV_URL (default http://127.0.0.1:8080)
#                                       or, if none answers, starts a temporary one
#
# The candidates (examples/quickstart/) were trained on a synthetic 3-class task and exported with
# clients/python/tpv_export.py by examples/make_quickstart_data.py; nothing is trained here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$ROOT/examples/quickstart"
export TPV_URL="${TPV_URL:-http://127.0.0.1:8080}"

# The binaries: TPVCTL_BIN / TPVD_BIN when set (the test suite points them at its build),
# else ./build, built first if missing.
TPVCTL="${TPVCTL_BIN:-$ROOT/build/clients/tpvctl}"
TPVD="${TPVD_BIN:-$ROOT/build/server/tpvd}"
if [ ! -x "$TPVCTL" ] || [ ! -x "$TPVD" ]; then
  "$ROOT/scripts/tpv" build >&2
fi

# A daemon to talk to: the running one, or a temporary one on a free port.
if ! curl -fsS "$TPV_URL/healthz" >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  "$TPVD" --listen 127.0.0.1:0 --data-dir "$tmp/data" --port-file "$tmp/port" \
    2>"$tmp/tpvd.log" &
  daemon=$!
  trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; rm -rf "$tmp"' EXIT
  for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.1; done
  export TPV_URL="http://127.0.0.1:$(cat "$tmp/port")"
  echo "started a temporary tpvd at $TPV_URL" >&2
fi

# One study, three noise models.  These candidates are classifiers, so the ranking uses what
# README recommends for classification (bench/selection): label noise relative to the logit
# scale with a scale-free ridge.  q8 is the recommendation for regression, iso a baseline.
sid=$("$TPVCTL" study create --name "quickstart-$(date +%s)" \
  --noise name=label,kind=label,sigma_rel=0.1,ridge_rel=0.1 \
  --noise name=iso,kind=isotropic,sigma=0.01 \
  --noise name=q8,kind=quantization,bits=8,scope=per_channel \
  --rank-by label)
echo "study $sid" >&2
"$TPVCTL" inputs put "$sid" fit "$DATA/x_fit.npy"
"$TPVCTL" inputs put "$sid" probe "$DATA/x_probe.npy"

jobs=()
while IFS=$'\t' read -r name train_loss _test_loss; do
  [ "$name" = name ] && continue
  jobs+=("$("$TPVCTL" --quiet candidate add "$sid" --name "$name" --train-loss "$train_loss" \
    --spec "$DATA/$name/spec.json" --weights "$DATA/$name/weights.safetensors")")
done < "$DATA/candidates.tsv"
for job in "${jobs[@]}"; do
  "$TPVCTL" --quiet job wait "$job" --timeout 120 >/dev/null
done

echo
"$TPVCTL" ranking "$sid" --split probe
echo
echo "TPV compares models that fit their training data; leave the underfit ones out:"
"$TPVCTL" ranking "$sid" --split probe --max-train-loss 0.05
echo
echo "Lower TPV = the model's predictions on unseen inputs move less when its training labels are"
echo "perturbed, which tracks lower test loss among models that fit their training data."
echo "Held-out test losses of these candidates, for comparison (tpvd never saw them):"
column -t -s $'\t' "$DATA/candidates.tsv" 2>/dev/null || cat "$DATA/candidates.tsv"
echo
echo "Among the five that fit, the second ranking is their test-loss order.  The underfit mlp-w8"
echo "has the best test loss of all: the others memorised the 5% flipped training labels, and"
echo "cross-entropy punishes their confident mistakes.  TPV ranks models that fit; whether to stop"
echo "earlier is a question for a validation loss (README, Quickstart)."
