#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers for the `postgres` registry tests, and writes its DSN to .tools/postgres/env
# (MCPAC_POSTGRES_DSN=...) for tests/conftest.py. In order:
#   1. MCPAC_POSTGRES_DSN, when set and answering;
#   2. the server these machines already run: postgresql://postgres@127.0.0.1:5432/test (trust auth);
#   3. otherwise (as root on Debian) it installs the `postgresql` package and starts a private cluster in
#      .tools/postgres/data on 127.0.0.1:${MCPAC_POSTGRES_PORT:-55432}, trust auth on loopback, database `test`.
# Idempotent: a rerun only checks. The private cluster keeps running; stop it with:
#   su postgres -c "pg_ctl -D .tools/postgres/data stop"   (the path printed below)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
DIR=$ROOT/.tools/postgres
PY=.venv/bin/python
mkdir -p "$DIR"

answers() {  # answers DSN: a connection and a query work
  "$PY" - "$1" <<'EOF' >/dev/null 2>&1
import sys, psycopg
with psycopg.connect(sys.argv[1], connect_timeout=3) as c:
    c.execute("SELECT 1")
EOF
}
write_env() {
  printf '# Written by scripts/postgres.sh\nMCPAC_POSTGRES_DSN=%s\n' "$1" >"$DIR/env"
  echo "==> postgres ready: $1 (.tools/postgres/env)"
}

for dsn in "${MCPAC_POSTGRES_DSN:-}" "postgresql://postgres@127.0.0.1:5432/test"; do
  if [ -n "$dsn" ] && answers "$dsn"; then
    write_env "$dsn"
    exit 0
  fi
done

PORT=${MCPAC_POSTGRES_PORT:-55432}
DSN="postgresql://postgres@127.0.0.1:$PORT/test"
if answers "$DSN"; then
  write_env "$DSN"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "error: no PostgreSQL answers (tried \$MCPAC_POSTGRES_DSN, 127.0.0.1:5432 and 127.0.0.1:$PORT)" >&2
  echo "hint: start one and set MCPAC_POSTGRES_DSN=postgresql://USER@HOST:PORT/DB, or run this script as root" >&2
  exit 1
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$BIN" ]; then
  echo "==> installing postgresql with apt-get (about 30 s)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
fi
DATA=$DIR/data
chown postgres "$DIR"
if [ ! -f "$DATA/PG_VERSION" ]; then
  echo "==> initdb $DATA"
  su postgres -c "$BIN/initdb -D '$DATA' -U postgres --auth=trust -E UTF8 --locale=C.UTF-8" >"$DIR/initdb.log" 2>&1 \
    || { tail -n 20 "$DIR/initdb.log" >&2; exit 1; }
fi
echo "==> starting PostgreSQL on 127.0.0.1:$PORT (log: $DIR/server.log)"
su postgres -c "$BIN/pg_ctl -D '$DATA' -l '$DIR/server.log' -w -t 30 \
  -o \"-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories='$DIR'\" start" >/dev/null \
  || { tail -n 20 "$DIR/server.log" >&2; exit 1; }
su postgres -c "$BIN/createdb -h 127.0.0.1 -p $PORT -U postgres test" 2>/dev/null || true
answers "$DSN" || { echo "error: PostgreSQL started but $DSN does not answer" >&2; tail -n 20 "$DIR/server.log" >&2; exit 1; }
write_env "$DSN"
