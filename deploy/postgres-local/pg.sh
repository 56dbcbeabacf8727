#!/usr/bin/env bash
# Runs a real PostgreSQL (Debian's `postgresql` package) for the work-queue service, for
# development and tests. No Docker.
#
#   deploy/postgres-local/pg.sh install  install Debian's postgresql package when missing
#   deploy/postgres-local/pg.sh up       initdb if needed, start on 127.0.0.1:$PG_PORT, print DSNs
#   deploy/postgres-local/pg.sh down     stop the server this script started (its data folder)
#   deploy/postgres-local/pg.sh status   say whether it runs
#
# Port: PG_PORT (default 55432). Everything of one port lives in data/<port>/ (gitignored):
# pgdata/ and postgres.log. The server listens on loopback only, without a Unix socket,
# and runs as a non-root user: as root, the `postgres` system user that the package
# creates (PG_OS_USER), owning the data folder; otherwise the calling user.
#
# Authentication is `trust` on loopback: this is a development server on a developer's
# machine, never a deployment (docs/work-queue.md says how to run a production one).
# Roles: `postgres` (superuser, runs `chargecap queue migrate`) and `chargecap_queue`
# (the service's login role; the migrations grant it what it may do).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${PG_PORT:-55432}"
HOST=127.0.0.1
DATA="$HERE/data/$PORT"
DB="${PG_DATABASE:-chargecap_queue}"
SERVICE_ROLE="${PG_SERVICE_ROLE:-chargecap_queue}"
OS_USER="${PG_OS_USER:-postgres}"
START_TIMEOUT="${PG_START_TIMEOUT:-60}"

say() { echo "postgres-local: $*"; }

# As root the server runs as $OS_USER, which must reach the data folder. When the checkout
# sits where that user cannot enter (a home directory with mode 700), the cluster lives in
# that user's home instead and data/<port> is a symlink to it.
place_data() {
  if [[ "$(id -u)" == 0 && ! -L "$DATA" ]] && id "$OS_USER" >/dev/null 2>&1 &&
    ! runuser -u "$OS_USER" -- test -x "$HERE"; then
    local home real
    home="$(getent passwd "$OS_USER" | cut -d: -f6)"
    real="$home/chargecap-dev/$(echo "$HERE" | md5sum | cut -c1-12)/$PORT"
    mkdir -p "$real" "$HERE/data"
    chown -R "$OS_USER:" "$home/chargecap-dev"
    [[ -d "$DATA" ]] && rmdir "$DATA" 2>/dev/null || true
    ln -sfn "$real" "$DATA"
  fi
  if [[ -L "$DATA" ]]; then
    DATA="$(readlink -f "$DATA")"
  fi
  PGDATA="$DATA/pgdata"
  LOG="$DATA/postgres.log"
}
place_data
die() { echo "postgres-local: $*" >&2; exit 1; }

bindir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  [[ -n "$d" && -x "$d/pg_ctl" ]] || return 1
  echo "$d"
}

install() {
  bindir >/dev/null && return 0
  [[ "$(id -u)" == 0 ]] ||
    die "PostgreSQL not installed; as root: apt-get update && apt-get install -y postgresql"
  say "installing Debian's postgresql package"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null ||
    die "apt-get install postgresql failed"
  bindir >/dev/null || die "postgresql installed but no /usr/lib/postgresql/*/bin/pg_ctl"
}

# Runs a command as the server's user (root cannot run postgres).
as_server() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u "$OS_USER" -- "$@"
  else
    "$@"
  fi
}

answers() { "$(bindir)/pg_isready" -q -h "$HOST" -p "$PORT" -t "${1:-2}"; }

ours_running() {
  [[ -f "$PGDATA/postmaster.pid" ]] || return 1
  as_server "$(bindir)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1
}

port_bound() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

psql_admin() {
  "$(bindir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PORT" -U postgres "$@"
}

print_dsn() {
  echo "admin:   postgresql://postgres@$HOST:$PORT/$DB"
  echo "service: postgresql://$SERVICE_ROLE@$HOST:$PORT/$DB"
}

init_cluster() {
  [[ -f "$PGDATA/PG_VERSION" ]] && return 0
  mkdir -p "$DATA"
  if [[ "$(id -u)" == 0 ]]; then
    id "$OS_USER" >/dev/null 2>&1 || die "system user $OS_USER missing (the postgresql package creates it)"
    chown "$OS_USER:" "$DATA"
  fi
  say "initdb into $PGDATA"
  as_server "$(bindir)/initdb" -D "$PGDATA" -U postgres --auth=trust --encoding=UTF8 \
    --locale=C.UTF-8 >"$DATA/initdb.log" 2>&1 || { cat "$DATA/initdb.log" >&2; die "initdb failed"; }
}

provision() {
  psql_admin -d postgres <<SQL
SELECT 'CREATE ROLE $SERVICE_ROLE LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$SERVICE_ROLE')\gexec
SELECT 'CREATE DATABASE $DB'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB')\gexec
SQL
}

up() {
  install
  if ours_running; then
    answers 5 || die "the server of $PGDATA runs but does not answer on $HOST:$PORT"
    say "already running on $HOST:$PORT"
    print_dsn
    return 0
  fi
  if answers; then
    say "a PostgreSQL not started by this script already answers on $HOST:$PORT; using it"
    print_dsn
    return 0
  fi
  port_bound "$PORT" && die "port $PORT is taken by something that is not PostgreSQL; set PG_PORT"
  init_cluster
  [[ "$(id -u)" == 0 ]] && touch "$LOG" && chown "$OS_USER:" "$LOG"
  say "starting PostgreSQL on $HOST:$PORT (log: $LOG)"
  as_server "$(bindir)/pg_ctl" -D "$PGDATA" -l "$LOG" -w -t "$START_TIMEOUT" start \
    -o "-c listen_addresses=$HOST -p $PORT -c unix_socket_directories='' -c max_connections=200 -c fsync=on" \
    >/dev/null || { tail -n 30 "$LOG" >&2; die "server did not start (see $LOG)"; }
  provision
  say "up"
  print_dsn
}

down() {
  if ! bindir >/dev/null || ! ours_running; then
    say "not running from $PGDATA; nothing to stop"
    return 0
  fi
  say "stopping the server of $PGDATA"
  as_server "$(bindir)/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
  say "stopped"
}

status() {
  if bindir >/dev/null && ours_running; then
    say "running on $HOST:$PORT from $PGDATA"
    return 0
  fi
  if bindir >/dev/null && answers; then
    say "a server not started by this script answers on $HOST:$PORT"
    return 0
  fi
  say "not running on port $PORT"
  return 3
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  status) status ;;
  dsn) print_dsn ;;
  *)
    echo "usage: $0 {install|up|down|status|dsn}" >&2
    exit 2
    ;;
esac
