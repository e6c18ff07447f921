#!/usr/bin/env bash
# test_systemd_unit.sh: deploy/tpvd.service as systemd would run it.
#  1. `systemd-analyze verify` accepts the unit (ExecStart pointed at the built binary).
#  2. Every option of its ExecStart exists and the files it names are optional or shipped.
#  3. tpvd runs under the unit's SystemCallFilter= lines, expanded by `systemd-analyze
#     syscall-filter` into the allow list systemd would load (seccomp_run applies it: any other
#     system call kills the process with SIGSYS), and scores a candidate: label noise (LAPACK,
#     OpenBLAS worker threads) and isotropic noise on both splits.
# Needs TPVD_BIN, SECCOMP_RUN, TPV_SOURCE_ROOT.
set -euo pipefail

ROOT="${TPV_SOURCE_ROOT:?}"
UNIT="$ROOT/deploy/tpvd.service"
TPVD="${TPVD_BIN:?}"
RUN="${SECCOMP_RUN:?}"
tmp="$(mktemp -d)"
daemon=""
cleanup() {
  if [ -n "$daemon" ]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$tmp/tpvd.log" ] && tail -20 "$tmp/tpvd.log" >&2; exit 1; }
pass() { echo "ok   $*"; }

# ---- 1. systemd-analyze verify -------------------------------------------------------------
sed "s#/usr/local/bin/tpvd#$TPVD#g" "$UNIT" > "$tmp/tpvd.service"
if ! systemd-analyze verify "$tmp/tpvd.service" > "$tmp/verify.txt" 2>&1; then
  cat "$tmp/verify.txt" >&2
  fail "systemd-analyze verify refuses the unit"
fi
# verify prints warnings about its own environment (no running manager in a container); any
# line naming the unit is about the unit.
if grep -i "tpvd.service" "$tmp/verify.txt"; then fail "systemd-analyze verify warns about the unit"; fi
pass "systemd-analyze verify accepts deploy/tpvd.service"

# ---- 2. ExecStart options exist, named files optional ------------------------------------------
exec_line="$(sed -n 's/^ExecStart=//p' "$UNIT")"
[ -n "$exec_line" ] || fail "no ExecStart"
read -r -a argv <<< "$exec_line"
help="$("$TPVD" --help 2>&1)"
for a in "${argv[@]:1}"; do
  case "$a" in
    --*) opt="${a%%=*}"; grep -q -- "$opt" <<< "$help" || fail "ExecStart option $opt is not in tpvd --help" ;;
  esac
done
if grep -q -- "--config" <<< "$exec_line"; then
  fail "ExecStart names a --config file that a fresh install does not have"
fi
grep -q '^EnvironmentFile=-' "$UNIT" || fail "the unit's EnvironmentFile must be optional (EnvironmentFile=-...)"
pass "ExecStart uses real options and names no file an install lacks"

# ---- 3. the unit's system-call filter ------------------------------------------------------
# expand NAME: the system calls of a group (recursively) or the name itself.
expand() {
  case "$1" in
    @*) systemd-analyze syscall-filter "$1" | sed -n 's/^    \([^#].*\)$/\1/p' |
          while read -r item; do expand "$item"; done ;;
    *) echo "$1" ;;
  esac
}
# systemd merges SystemCallFilter= lines in order: the first (without ~) is the allow list,
# a later ~ line removes, a later plain line adds.  These are always allowed (systemd.exec(5)).
printf '%s\n' execve exit exit_group getrlimit rt_sigreturn sigreturn > "$tmp/allow"
first=1
while IFS= read -r value; do
  deny=0
  if [ "${value:0:1}" = "~" ]; then deny=1; value="${value:1}"; fi
  [ $first -eq 1 ] && [ $deny -eq 1 ] && fail "a deny-list filter first is not what this test models"
  first=0
  for item in $value; do expand "$item"; done | sort -u > "$tmp/items"
  if [ $deny -eq 1 ]; then
    grep -vxF -f "$tmp/items" "$tmp/allow" > "$tmp/allow.new" || true
  else
    sort -u "$tmp/allow" "$tmp/items" > "$tmp/allow.new"
  fi
  mv "$tmp/allow.new" "$tmp/allow"
done < <(sed -n 's/^SystemCallFilter=//p' "$UNIT")
[ "$(wc -l < "$tmp/allow")" -gt 100 ] || fail "the expanded allow list is implausibly short"
pass "the unit's filter expands to $(wc -l < "$tmp/allow") system calls"

# DynamicUser=yes: the unit never runs as root (and SQLite, as root, would fchown its journal,
# which ~@privileged forbids), so neither does this test.
mkdir -p "$tmp/data"
as_unit_user=()
if [ "$(id -u)" -eq 0 ]; then
  chown 65534:65534 "$tmp" "$tmp/data"
  as_unit_user=(setpriv --reuid 65534 --regid 65534 --clear-groups)
fi
"${as_unit_user[@]}" "$RUN" "$tmp/allow" "$TPVD" --listen 127.0.0.1:0 --data-dir "$tmp/data" \
  --port-file "$tmp/port" --workers 2 2> "$tmp/tpvd.log" &
daemon=$!
for _ in $(seq 200); do [ -s "$tmp/port" ] && break; kill -0 "$daemon" 2>/dev/null || break; sleep 0.05; done
[ -s "$tmp/port" ] || fail "tpvd did not start under the unit's filter"
B="http://127.0.0.1:$(cat "$tmp/port")"
Q="$ROOT/examples/quickstart"
up() { curl -fsS -X PUT --data-binary @"$1" "$B/v1/blobs" | sed 's/.*"digest":"\([^"]*\)".*/\1/'; }
js() { curl -fsS -H 'Content-Type: application/json' "$@"; }
sid=$(js -X POST "$B/v1/studies" -d '{"name":"unit","noise_models":[
  {"name":"label","kind":"label","sigma":0.1,"ridge_rel":0.05},
  {"name":"iso","kind":"isotropic","sigma":0.01}]}' | sed 's/.*"id":"\(st_[^"]*\)".*/\1/')
js -X PUT "$B/v1/studies/$sid/inputs/fit" -d "{\"blob\":\"$(up "$Q/x_fit.npy")\"}" > /dev/null
js -X PUT "$B/v1/studies/$sid/inputs/probe" -d "{\"blob\":\"$(up "$Q/x_probe.npy")\"}" > /dev/null
m="$Q/mlp-w128-d1-wd0"
spec=$(up "$m/spec.json"); weights=$(up "$m/weights.safetensors")
job=$(js -X POST "$B/v1/studies/$sid/candidates" \
  -d "{\"name\":\"w128\",\"model\":{\"spec\":\"$spec\",\"weights\":\"$weights\"}}" |
  sed 's/.*"job":{"id":"\(jb_[^"]*\)".*/\1/')
state=""
for _ in $(seq 600); do
  kill -0 "$daemon" 2>/dev/null || break
  state=$(curl -fsS "$B/v1/jobs/$job" | sed 's/.*"state":"\([a-z]*\)".*/\1/')
  case "$state" in succeeded|failed|canceled) break ;; esac
  sleep 0.1
done
if ! kill -0 "$daemon" 2>/dev/null; then
  wait "$daemon" && st=0 || st=$?
  daemon=""
  fail "tpvd died under the unit's system-call filter (exit status $st; 159 = SIGSYS)"
fi
[ "$state" = succeeded ] || fail "the job ended $state"
n=$(curl -fsS "$B/v1/studies/$sid/candidates" | grep -o '"split":"' | wc -l)
[ "$n" -eq 4 ] || fail "expected 4 scores (2 noise models x 2 splits), got $n"
pass "tpvd scores label and isotropic noise on both splits under the unit's filter"
echo "4 passed, 0 failed"
