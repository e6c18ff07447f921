#!/bin/sh
# bench/run.sh: runs the numerics benchmarks (never run by meson test) and prints their ratios.
#
#   bench/run.sh [BUILD_DIR (build)] [ROUNDS (3)] [which: all|sqdiag|gram|label|mlp]
#
# Every benchmark measures its baseline in the same run and prints a RATIO line; each is run
# ROUNDS times with the machine's preset OpenBLAS settings and, side by side, with
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset (DESIGN.md section 8: tests and CI keep the preset).
# Record results in bench/RESULTS.md with the machine, the command and the load.
set -eu
BUILD=${1:-build}
ROUNDS=${2:-3}
WHICH=${3:-all}
B="$BUILD/bench"
[ -x "$B/bench_sqdiag" ] || { echo "build first: meson setup $BUILD && ninja -C $BUILD" >&2; exit 1; }

run() { # name, command...
    name=$1; shift
    for setting in preset unset; do
        i=1
        while [ "$i" -le "$ROUNDS" ]; do
            echo "== $name [$setting] round $i (load: $(cut -d' ' -f1-3 /proc/loadavg))"
            if [ "$setting" = unset ]; then
                env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$@"
            else
                "$@"
            fi
            i=$((i + 1))
        done
    done
}

case $WHICH in all|sqdiag) run sqdiag "$B/bench_sqdiag" /tmp/tpv_bench_sqdiag.npy 7 ;; esac
case $WHICH in all|gram) run gram "$B/bench_gram" 4000 50000 3 ;; esac
case $WHICH in all|label) run label "$B/bench_label" 3000 3000 300 3 ;; esac
case $WHICH in mlp) [ -x "$B/bench_mlp" ] && "$B/bench_mlp" ;; esac
