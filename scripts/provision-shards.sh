#!/usr/bin/env bash
# Provision local shard servers for embcat's sharded layout (docs/scaling.md §6; the test
# fixture `shard_urls` and benchmarks/bench_shards.py call it).
#
#   scripts/provision-shards.sh [N]      (default N=2; EMBCAT_SHARD_BASE_PORT, default 5441)
#
# 1. N extra PostgreSQL clusters on loopback ports BASE+1 .. BASE+N (pg_createcluster,
#    Debian; the one already on a port is used; new ones are "embcat_shard<i>", or
#    "embcat_shard_<port>" for another base port or when that name is taken), password (scram) authentication on 127.0.0.1 only, with a
#    role embcat/embcat (superuser of that shard server) and a template database embcat_shard_template that holds PostGIS,
#    pgvector and postgres_fdw (the shard reads the coordinator's items through it).
# 2. On the coordinator (EMBCAT_DATABASE_URL's server, the cluster on 5432): postgres_fdw
#    and dblink in the catalogue's template database (<db>_template) and in the database
#    itself, and USAGE on the postgres_fdw wrapper for the catalogue role (non-superusers
#    need it to create the foreign servers of `embcat shard add`).
#
# Idempotent and quick when done (every step checks first); prints one line per shard URL.
# Needs root (runuser postgres) on Debian/Ubuntu with PostgreSQL 15, PostGIS and pgvector
# installed (scripts/provision-db.sh).
set -euo pipefail

N=${1:-2}
BASE=${EMBCAT_SHARD_BASE_PORT:-5441}
ROLE=${EMBCAT_DB_ROLE:-embcat}
PASSWORD=${EMBCAT_DB_PASSWORD:-embcat}
TEMPLATE=embcat_shard_template
COORD_PORT=${EMBCAT_DB_PORT:-5432}

say() { printf '[provision-shards] %s\n' "$*" >&2; }
die() { printf '[provision-shards] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (pg_createcluster, runuser postgres)"
command -v pg_lsclusters >/dev/null || die "PostgreSQL is not installed: run scripts/provision-db.sh first"
PGV=$(ls /usr/lib/postgresql | sort -n | tail -n1)

psql_port() { local port=$1; shift; runuser -u postgres -- psql -p "$port" -XAtq -v ON_ERROR_STOP=1 "$@"; }

for i in $(seq 1 "$N"); do
  port=$((BASE + i))
  # a shard server is known by its port (a second base port, e.g. a development catalogue
  # beside the test one, gets clusters of its own names)
  name=$(pg_lsclusters -h | awk -v p="$port" '$3 == p {print $2}' | head -n1)
  if [ -z "$name" ]; then
    name=embcat_shard${i}
    if [ "$BASE" != 5441 ] || pg_lsclusters -h | awk '{print $2}' | grep -qx "$name"; then
      name=embcat_shard_${port}
    fi
  fi
  if ! pg_lsclusters -h | awk '{print $2}' | grep -qx "$name"; then
    say "creating cluster ${PGV}/${name} on port ${port}"
    pg_createcluster "$PGV" "$name" --port "$port" -- --auth-host=scram-sha-256 --auth-local=peer >/dev/null
    conf=/etc/postgresql/${PGV}/${name}/postgresql.conf
    # small servers: several of them share one machine with the coordinator
    printf "listen_addresses = '127.0.0.1'\nshared_buffers = '256MB'\nmax_wal_size = '2GB'\nfsync = on\n" >> "$conf"
  fi
  status=$(pg_lsclusters -h | awk -v n="$name" '$2 == n {print $4}')
  if [ "$status" != online ]; then
    pg_ctlcluster --skip-systemctl-redirect "$PGV" "$name" start
  fi
  # superuser on its own shard server: the shard reads the coordinator's items back through
  # postgres_fdw, and the development coordinator (trust on 127.0.0.1) asks no password,
  # which postgres_fdw refuses to a non-superuser (docs/scaling.md §6)
  if [ -z "$(psql_port "$port" -c "select 1 from pg_roles where rolname='${ROLE}'")" ]; then
    psql_port "$port" -c "CREATE ROLE ${ROLE} LOGIN CREATEDB SUPERUSER PASSWORD '${PASSWORD}'"
  fi
  psql_port "$port" -c "ALTER ROLE ${ROLE} SUPERUSER" >/dev/null
  if [ -z "$(psql_port "$port" -c "select 1 from pg_database where datname='${TEMPLATE}'")" ]; then
    psql_port "$port" -c "CREATE DATABASE ${TEMPLATE} OWNER ${ROLE}"
    psql_port "$port" -d "$TEMPLATE" -c "CREATE EXTENSION IF NOT EXISTS postgis; CREATE EXTENSION IF NOT EXISTS vector; CREATE EXTENSION IF NOT EXISTS postgres_fdw; GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO ${ROLE};"
    psql_port "$port" -c "ALTER DATABASE ${TEMPLATE} WITH IS_TEMPLATE true" >/dev/null
  fi
  echo "postgresql://${ROLE}:${PASSWORD}@127.0.0.1:${port}/${TEMPLATE}"
done

# The coordinator: postgres_fdw + dblink where the catalogue (and its tests) live.
url=${EMBCAT_DATABASE_URL:-postgresql://${ROLE}:${PASSWORD}@127.0.0.1:${COORD_PORT}/embcat}
db=${url##*/}; db=${db%%\?*}
for d in "$db" "${db}_template"; do
  if [ -n "$(psql_port "$COORD_PORT" -c "select 1 from pg_database where datname='${d}'")" ]; then
    have=$(psql_port "$COORD_PORT" -d "$d" -c "select count(*) from pg_extension where extname in ('postgres_fdw','dblink')")
    if [ "$have" != 2 ]; then
      say "postgres_fdw + dblink in ${d}"
      psql_port "$COORD_PORT" -d "$d" -c "CREATE EXTENSION IF NOT EXISTS postgres_fdw; CREATE EXTENSION IF NOT EXISTS dblink; GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO ${ROLE};" >/dev/null
    fi
  fi
done
