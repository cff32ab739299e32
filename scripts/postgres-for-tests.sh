# Source this file (`. scripts/postgres-for-tests.sh`) to start a throwaway PostgreSQL server for
# the tests of `aiopt optimize --storage postgresql://...` (tests/test_optimize_postgres.py):
# Debian's package (installed with apt-get when missing and running as root), a data directory
# under /tmp owned by the postgres user, bound to 127.0.0.1 on a free port, a random password.
# Exports AIOPT_TEST_POSTGRES_URL (the server) and AIOPT_TEST_POSTGRES_CTL (pg_ctl for that data
# directory: the outage test stops and starts it); an EXIT trap stops the server and removes the
# directory. Where no server can be had, it says so and the tests skip with that reason.

_aiopt_pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true; }

_aiopt_pg_start() {
  local bin tmp port password as_postgres=()
  bin=$(_aiopt_pg_bin)
  if [ -z "$bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    # the package's own cluster and service are not wanted: only its binaries
    mkdir -p /etc/postgresql-common && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    echo "postgres-for-tests: installing PostgreSQL (apt-get)" >&2
    # (UCF_FORCE_CONFFOLD: the package keeps that file instead of asking)
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1 apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confold postgresql; } > /tmp/aiopt-pg-apt.log 2>&1 \
      || { cat /tmp/aiopt-pg-apt.log >&2; echo "postgres-for-tests: apt-get install postgresql failed" >&2; return 0; }
    bin=$(_aiopt_pg_bin)
  fi
  if [ -z "$bin" ]; then
    echo "postgres-for-tests: no PostgreSQL server binaries (apt-get install postgresql); the PostgreSQL tests will skip" >&2
    return 0
  fi
  tmp=$(mktemp -d /tmp/aiopt-pg.XXXXXX)
  chmod 755 "$tmp"
  if [ "$(id -u)" = 0 ]; then  # initdb and postgres refuse to run as root
    chown postgres: "$tmp"
    as_postgres=(runuser -u postgres --)
  fi
  password="pw@$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"  # an "@" in it: URLs must escape it
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf '%s\n' "$password" > "$tmp/pw" && chmod 644 "$tmp/pw"
  if ! "${as_postgres[@]}" "$bin/initdb" -D "$tmp/data" -U aiopt --pwfile="$tmp/pw" -A scram-sha-256 -N > "$tmp/initdb.log" 2>&1; then
    cat "$tmp/initdb.log" >&2; echo "postgres-for-tests: initdb failed" >&2; return 0
  fi
  rm -f "$tmp/pw"
  # a throwaway server: no fsync; settings in the file, so that a plain `pg_ctl start` restarts it alike
  printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n" \
    "$port" "$tmp" >> "$tmp/data/postgresql.conf"
  if ! "${as_postgres[@]}" "$bin/pg_ctl" -D "$tmp/data" -l "$tmp/log" -w start > /dev/null; then
    cat "$tmp/log" >&2; echo "postgres-for-tests: the server did not start" >&2; return 0
  fi
  AIOPT_TEST_POSTGRES_DIR=$tmp
  export AIOPT_TEST_POSTGRES_URL="postgresql://aiopt:${password//@/%40}@127.0.0.1:$port/postgres"
  export AIOPT_TEST_POSTGRES_CTL="${as_postgres[*]} $bin/pg_ctl -D $tmp/data -l $tmp/log"
  trap _aiopt_pg_stop EXIT
  echo "postgres-for-tests: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $tmp)" >&2
}

_aiopt_pg_stop() {
  [ -n "${AIOPT_TEST_POSTGRES_CTL:-}" ] && $AIOPT_TEST_POSTGRES_CTL -m immediate stop > /dev/null 2>&1
  [ -n "${AIOPT_TEST_POSTGRES_DIR:-}" ] && rm -rf "$AIOPT_TEST_POSTGRES_DIR"
  return 0
}

_aiopt_pg_start
