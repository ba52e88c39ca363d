#!/usr/bin/env bash
# Installs (Debian package) and starts a PostgreSQL server on loopback with a database for the
# shared-study test; idempotent. Prints nothing on success but the connection URL.
set -euo pipefail
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
    pg_ctlcluster "$version" main start
fi
for _ in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 && break
    sleep 1
done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='gabench'\"" | grep -q 1 \
    || su postgres -c "psql -qc \"CREATE ROLE gabench LOGIN PASSWORD 'gabench'\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='gabench'\"" | grep -q 1 \
    || su postgres -c "createdb -O gabench gabench"
echo "postgresql://gabench:gabench@127.0.0.1:5432/gabench"
