# The real services the test run needs, one function each; sourced by .ci/run (and by a
# developer who wants the same throwaway PostgreSQL: `. .ci/services.sh; start_postgres`).

PG_BIN=/usr/lib/postgresql/15/bin

# apt_install PACKAGE PATH: install Debian's PACKAGE unless PATH exists (two tries).
apt_install() {
  local package=$1 path=$2 log
  [ -e "$path" ] && return 0
  log=$(mktemp)
  for _ in 1 2; do
    if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package"; } \
      >"$log" 2>&1; then
      break
    fi
    sleep 5
  done
  if [ ! -e "$path" ]; then
    tail -n 20 "$log" >&2
    echo ".ci/run: could not install $package (apt-get install $package)" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

# Debian's Chromium, for the test that opens `floraq report` in a real headless browser.
ensure_chromium() {
  apt_install chromium /usr/bin/chromium
}

# as_postgres CMD...: run CMD as the `postgres` user when we are root (initdb refuses root).
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# start_postgres: a throwaway cluster in a temp dir on 127.0.0.1 and a free port; exports
# FLORAQ_TEST_POSTGRES (trust auth, no password). stop_postgres removes it again.
start_postgres() {
  apt_install postgresql "$PG_BIN/initdb" || return 1
  PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/floraq-pg.XXXXXX")
  [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR"
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w \
    -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
    || { cat "$PG_DIR/server.log" >&2; return 1; }
  export FLORAQ_TEST_POSTGRES="postgresql://postgres@127.0.0.1:$port/postgres"
}

stop_postgres() {
  [ -n "${PG_DIR:-}" ] || return 0
  if [ -d "$PG_DIR/data" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PG_DIR"
  PG_DIR=
}
