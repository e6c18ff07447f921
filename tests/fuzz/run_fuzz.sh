#!/usr/bin/env bash
# run_fuzz.sh TARGET SEED_DIR SECONDS: fuzz for a bounded time from a scratch copy of the seed
# corpus (the committed corpus is never modified); crash inputs are kept under fuzz-artifacts/.
set -euo pipefail
target="$1" seeds="$2" seconds="$3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" fuzz-artifacts
cp -r "$seeds"/. "$work/corpus/" 2>/dev/null || true
# libFuzzer exits 77 on some crashes (deadly signal), which meson would count as a skip:
# any non-zero exit is a failure here.
status=0
"$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$PWD/fuzz-artifacts/$(basename "$target")-" "$work/corpus" || status=$?
if [ "$status" -ne 0 ]; then
  echo "fuzz target $(basename "$target") failed with exit status $status" >&2
  exit 1
fi
