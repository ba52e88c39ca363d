#!/usr/bin/env bash
# Installs (Debian package) and starts a PostgreSQL server on loopback with a database for the
# shared-study test; idempotent. Its stdout carries only the connection URL: every other
# message (apt, pg_ctlcluster's "Removed stale pid file.", ...) goes to stderr.
set -euo pipefail
exec 3>&1 1>&2
export DEBIAN_FRONTEND=noninteractive
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
    pg_createcluster "$version" main >/dev/null
fi
if ! pg_lsclusters -h | grep -q "^$version main .* online"; then
    # A server killed without shutdown leaves socket lock files naming a dead PID; remove them.
    for lock in /var/run/postgresql/.s.PGSQL.*.lock; do
        [ -e "$lock" ] || continue
        pid=$(head -n 1 "$lock")
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            echo "postgres.sh: removing stale $lock (PID $pid is gone)" >&2
            rm -f "$lock" "${lock%.lock}"
        fi
    done
    pg_ctlcluster "$version" main start 3>&-  # the daemon must not hold the URL pipe open
fi
ready=0
for _ in $(seq 1 30); do
    if pg_isready -q -h 127.0.0.1; then ready=1; break; fi
    sleep 1
done
if [ "$ready" != 1 ]; then
    echo "postgres.sh: PostgreSQL $version did not accept connections on 127.0.0.1:5432 within 30 s" >&2
    exit 1
fi
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='gabench'\"" | grep -q 1 \
    || su postgres -c "psql -qc \"CREATE ROLE gabench LOGIN PASSWORD 'gabench'\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='gabench'\"" | grep -q 1 \
    || su postgres -c "createdb -O gabench gabench"
echo "postgresql://gabench:gabench@127.0.0.1:5432/gabench" >&3
