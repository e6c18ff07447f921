#!/usr/bin/env bash
# run_fuzz.sh TARGET SEED_DIR SECONDS: fuzz for a bounded time from a scratch copy of the seed
# corpus (the committed corpus is never modified); crash inputs are kept under fuzz-artifacts/.
set -euo pipefail
target="$1" seeds="$2" seconds="$3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" fuzz-artifacts
cp -r "$seeds"/. "$work/corpus/" 2>/dev/null || true
exec "$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$PWD/fuzz-artifacts/$(basename "$target")-" "$work/corpus"
