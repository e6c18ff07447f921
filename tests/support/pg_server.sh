#!/usr/bin/env bash
# pg_server.sh: a throw-away PostgreSQL 15 for the tests, from Debian's postgresql package.
#
#   pg_server.sh start            initdb into a new temp dir, start the server there (unix socket
#                                 in that dir only, no TCP), create database tpvd; prints the libpq
#                                 URI (postgresql://tpv@/tpvd?host=DIR) on stdout
#   pg_server.sh stop    DIR|URI  stop the server and remove its dir (nothing happens for a dir
#                                 that is not one of ours)
#   pg_server.sh restart DIR|URI  pg_ctl restart (tests of reconnecting clients)
#   pg_server.sh down    DIR|URI  stop the server, keep its data (tests of an outage)
#   pg_server.sh up      DIR|URI  start it again after `down` (nothing when it runs)
#   pg_server.sh env     DIR|URI  prints `export TPV_TEST_PG_URI=...` for eval
#
# As root the server runs as the postgres user (PostgreSQL refuses to run as root): the temp dir
# is chowned to it.  Durability settings (fsync, synchronous_commit, full_page_writes) are left at
# their defaults so that durability tests test what production runs.
set -euo pipefail

PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
MARK=tpv-test-pg # a file in every dir we made, so that stop never removes anything else

die() { echo "pg_server.sh: $*" >&2; exit 1; }

as_owner() { # runs a command as the server's user (from /: it may not enter the caller's cwd)
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

# DIR from a dir or from a URI's host= parameter.
dir_of() {
  local arg="${1:-}"
  [ -n "$arg" ] || die "give the server's dir or URI"
  case "$arg" in
    postgresql:*|postgres:*)
      arg="${arg#*host=}"
      arg="${arg%%&*}"
      ;;
  esac
  [ -f "$arg/$MARK" ] || die "$arg is not a test server dir"
  printf '%s\n' "$arg"
}

uri_of() { printf 'postgresql://tpv@/tpvd?host=%s\n' "$1"; }

pg_start() { # DIR: start and wait until it accepts connections
  local dir="$1"
  as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
    { cat "$dir/server.log" >&2; die "server did not start"; }
}

cmd_start() {
  [ -x "$PG_BIN/initdb" ] || die "$PG_BIN/initdb missing: apt-get install postgresql"
  local dir
  dir="$(mktemp -d /tmp/tpv-pg.XXXXXX)"
  touch "$dir/$MARK"
  [ "$(id -u)" -ne 0 ] || chown -R postgres:postgres "$dir"
  # trust on the unix socket only: the socket lives in a 0700 dir of the server's user.
  as_owner "$PG_BIN/initdb" -D "$dir/data" -U tpv --auth=trust -E UTF8 --locale=C.UTF-8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 32MB
log_min_messages = warning
EOF
  pg_start "$dir"
  as_owner "$PG_BIN/createdb" -h "$dir" -U tpv tpvd || die "createdb failed"
  uri_of "$dir"
}

cmd_stop() {
  local dir
  dir="$(dir_of "${1:-}")"
  if [ -f "$dir/data/postmaster.pid" ]; then
    as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null || true
  fi
  rm -rf "$dir"
}

cmd_restart() {
  local dir
  dir="$(dir_of "${1:-}")"
  as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart \
    >/dev/null || { cat "$dir/server.log" >&2; die "restart failed"; }
}

cmd_down() {
  local dir
  dir="$(dir_of "${1:-}")"
  as_owner "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null || die "stop failed"
}

cmd_up() { # a no-op when it is running: tests call it on their way out whatever happened
  local dir
  dir="$(dir_of "${1:-}")"
  if as_owner "$PG_BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    return 0
  fi
  pg_start "$dir"
}

cmd_env() {
  local dir
  dir="$(dir_of "${1:-}")"
  printf 'export TPV_TEST_PG_URI=%q\n' "$(uri_of "$dir")"
}

case "${1:-}" in
  start)   cmd_start ;;
  stop)    cmd_stop "${2:-}" ;;
  restart) cmd_restart "${2:-}" ;;
  down)    cmd_down "${2:-}" ;;
  up)      cmd_up "${2:-}" ;;
  env)     cmd_env "${2:-}" ;;
  *) echo "usage: $0 {start|stop DIR|restart DIR|down DIR|up DIR|env DIR}" >&2; exit 2 ;;
esac
