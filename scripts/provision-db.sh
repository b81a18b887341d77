#!/usr/bin/env bash
# Provision PostgreSQL + PostGIS + pgvector for embcat (used by `make demo`, `make test` and CI).
#
# 1. If EMBCAT_DATABASE_URL is set and the server it names has (or can create) the postgis
#    and vector extensions at the required versions, use it and change nothing.
# 2. Otherwise, on Debian/Ubuntu as root: install PostgreSQL + PostGIS from the distribution,
#    pgvector from the distribution's package if there is one, else build it from the Debian
#    source package; start the cluster if it is down; create the role, the database and a
#    template database that already holds the extensions (the test suite clones it);
#    size the server's memory for bulk loads and HNSW search (see tune_cluster; restarts the
#    cluster once when shared_buffers changes; EMBCAT_DB_TUNE=0 leaves the settings alone).
# 3. On any other system: fail and point at compose.yaml.
#
# Idempotent: every step checks before it acts; a second run changes nothing.
set -euo pipefail

MIN_PG=15 MIN_POSTGIS=3.3 MIN_VECTOR=0.8
ROLE=${EMBCAT_DB_ROLE:-embcat}
PASSWORD=${EMBCAT_DB_PASSWORD:-embcat}
DB=${EMBCAT_DB_NAME:-embcat}
TEMPLATE=${DB}_template
PORT=${EMBCAT_DB_PORT:-5432}
DEFAULT_URL="postgresql://${ROLE}:${PASSWORD}@127.0.0.1:${PORT}/${DB}"
PGVECTOR_SUITE=${EMBCAT_PGVECTOR_SUITE:-trixie}   # Debian release whose source package we build

say() { printf '[provision-db] %s\n' "$*"; }
die() { printf '[provision-db] ERROR: %s\n' "$*" >&2; exit 1; }

# version_ge A B: true when dotted version A >= B
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# check_url URL: succeeds when the server is reachable, >= MIN_PG, and postgis + vector exist
# (creating them if they are available but not yet created). Prints the reason otherwise.
check_url() {
  local url=$1 out
  if ! out=$(psql "$url" -XAtq -v ON_ERROR_STOP=1 -c "show server_version_num" 2>&1); then
    echo "cannot connect: ${out}"; return 1
  fi
  if [ "${out}" -lt $((MIN_PG * 10000)) ]; then
    echo "PostgreSQL server_version_num ${out} is older than ${MIN_PG}"; return 1
  fi
  psql "$url" -XAtq -c "CREATE EXTENSION IF NOT EXISTS postgis" >/dev/null 2>&1 || true
  psql "$url" -XAtq -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null 2>&1 || true
  local postgis vector
  postgis=$(psql "$url" -XAtq -c "select extversion from pg_extension where extname='postgis'")
  vector=$(psql "$url" -XAtq -c "select extversion from pg_extension where extname='vector'")
  [ -n "$postgis" ] || { echo "extension postgis is missing and cannot be created"; return 1; }
  [ -n "$vector" ] || { echo "extension vector (pgvector) is missing and cannot be created"; return 1; }
  version_ge "$postgis" "$MIN_POSTGIS" || { echo "postgis ${postgis} is older than ${MIN_POSTGIS}"; return 1; }
  version_ge "$vector" "$MIN_VECTOR" || { echo "pgvector ${vector} is older than ${MIN_VECTOR}"; return 1; }
  echo "PostgreSQL ${out}, postgis ${postgis}, pgvector ${vector}"
}

if [ -n "${EMBCAT_DATABASE_URL:-}" ]; then
  psql_url=${EMBCAT_DATABASE_URL/postgresql+psycopg:/postgresql:}
  if msg=$(check_url "$psql_url"); then
    say "using EMBCAT_DATABASE_URL: ${msg}"; exit 0
  fi
  case "$psql_url" in
    *@127.0.0.1*|*@localhost*|*@/*|*host=/*) say "EMBCAT_DATABASE_URL not usable yet (${msg}); provisioning the local server";;
    *) die "EMBCAT_DATABASE_URL is not usable: ${msg}. Fix that server, unset the variable to provision a local one, or use compose.yaml (docker compose up db).";;
  esac
fi

su_psql_port() { runuser -u postgres -- psql -p "$PORT" -XAtq -v ON_ERROR_STOP=1 "$@"; }

# catalogue_cluster: "version name port status" of the catalogue's cluster: the one on
# ${PORT}, else the first that is not one of scripts/provision-shards.sh's shard clusters
# (pg_lsclusters sorts by name, so "embcat_shard1" comes before "main"); empty if none.
catalogue_cluster() {
  local line
  line=$(pg_lsclusters -h | awk -v p="$PORT" '$3 == p {print; exit}')
  [ -n "$line" ] || line=$(pg_lsclusters -h | awk '$2 !~ /^embcat_shard/ {print; exit}')
  printf '%s\n' "$line"
}

# tune_cluster: Debian's defaults (shared_buffers 128MB, max_wal_size 1GB) make a bulk
# publish evict dirty pages and flush WAL mid-load, and HNSW search read every page
# through the OS cache. Set the usual sizing (shared_buffers a quarter of RAM, at most
# 8GB; effective_cache_size half of RAM; max_wal_size 4GB) unless already set; the
# restart that shared_buffers needs happens once.
tune_cluster() {
  [ "${EMBCAT_DB_TUNE:-1}" != 0 ] || { say "EMBCAT_DB_TUNE=0: server settings left alone"; return; }
  local mem_mb sb_mb ec_mb changed=0 name want have cver cname
  read -r cver cname _ < <(catalogue_cluster)
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  sb_mb=$((mem_mb / 4)); [ "$sb_mb" -le 8192 ] || sb_mb=8192; [ "$sb_mb" -ge 128 ] || sb_mb=128
  ec_mb=$((mem_mb / 2)); [ "$ec_mb" -ge 512 ] || ec_mb=512
  for pair in "shared_buffers=${sb_mb}MB" "effective_cache_size=${ec_mb}MB" "max_wal_size=4GB"; do
    name=${pair%%=*}; want=${pair#*=}
    have=$(su_psql_port -c "select coalesce((select setting from pg_file_settings where name = '${name}' and applied is not null order by seqno desc limit 1), '')")
    if [ "$have" != "$want" ]; then
      su_psql_port -c "ALTER SYSTEM SET ${name} = '${want}'"; changed=1
    fi
  done
  [ "$changed" = 1 ] || return 0
  su_psql_port -c "select pg_reload_conf()" >/dev/null
  sleep 0.5
  if [ "$(su_psql_port -c "select bool_or(pending_restart) from pg_settings")" = t ]; then
    say "restarting cluster ${cver}/${cname} for shared_buffers=${sb_mb}MB"
    pg_ctlcluster --skip-systemctl-redirect "$cver" "$cname" restart
  fi
  say "server sized: shared_buffers ${sb_mb}MB, effective_cache_size ${ec_mb}MB, max_wal_size 4GB"
}

# Fast path: the default local database is already complete.
if command -v psql >/dev/null && msg=$(check_url "$DEFAULT_URL" 2>/dev/null) \
   && psql "$DEFAULT_URL" -XAtq -c "select 1 from pg_database where datname='${TEMPLATE}'" | grep -q 1; then
  if [ "$(id -u)" = 0 ] && command -v pg_lsclusters >/dev/null && pg_lsclusters -h | grep -q online; then
    tune_cluster
  fi
  say "ready: ${DEFAULT_URL} (${msg})"; exit 0
fi

# ---- local provisioning (Debian/Ubuntu, root) ----
if [ ! -r /etc/os-release ] || ! grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release; then
  die "automatic provisioning supports Debian/Ubuntu only. Start a database with 'docker compose up -d db' (compose.yaml) and set EMBCAT_DATABASE_URL=${DEFAULT_URL}"
fi
[ "$(id -u)" = 0 ] || die "provisioning a local PostgreSQL needs root (apt-get). Run as root, or start 'docker compose up -d db' (compose.yaml) and set EMBCAT_DATABASE_URL."

export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_install() {
  if [ $apt_updated = 0 ]; then apt-get update -qq; apt_updated=1; fi
  say "apt-get install $*"; apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v pg_lsclusters >/dev/null || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
  apt_install postgresql postgresql-contrib
fi
PGV=$(ls /usr/lib/postgresql | sort -n | tail -n1)
[ "$PGV" -ge "$MIN_PG" ] || die "installed PostgreSQL ${PGV} is older than ${MIN_PG}"
PG_CONFIG=/usr/lib/postgresql/${PGV}/bin/pg_config
EXT_DIR=$("$PG_CONFIG" --sharedir)/extension

if ! ls "$EXT_DIR"/postgis.control >/dev/null 2>&1; then
  apt_install "postgresql-${PGV}-postgis-3"
fi

vector_ok() {
  local f="$EXT_DIR/vector.control" v
  [ -f "$f" ] || return 1
  v=$(sed -n "s/^default_version *= *'\(.*\)'/\1/p" "$f")
  version_ge "$v" "$MIN_VECTOR"
}
if ! vector_ok; then
  if [ $apt_updated = 0 ]; then apt-get update -qq; apt_updated=1; fi
  if apt-cache show "postgresql-${PGV}-pgvector" >/dev/null 2>&1 \
     && apt_install "postgresql-${PGV}-pgvector" && vector_ok; then
    say "pgvector installed from the distribution"
  else
    say "no pgvector >= ${MIN_VECTOR} package; building it from Debian ${PGVECTOR_SUITE}'s source package"
    apt_install "postgresql-server-dev-${PGV}" build-essential dpkg-dev
    src_list=/etc/apt/sources.list.d/embcat-pgvector-src.sources
    if [ ! -f "$src_list" ]; then
      printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$PGVECTOR_SUITE" > "$src_list"
    fi
    apt-get update -qq
    build=$(mktemp -d)
    (cd "$build" && apt-get source --download-only -qq pgvector >/dev/null \
      && dpkg-source -x --no-check ./*.dsc src >/dev/null \
      && make -s -C src PG_CONFIG="$PG_CONFIG" OPTFLAGS="" >/dev/null \
      && make -s -C src PG_CONFIG="$PG_CONFIG" install >/dev/null)
    rm -rf "$build"
    vector_ok || die "pgvector build did not install vector >= ${MIN_VECTOR}"
    say "pgvector built and installed"
  fi
fi

if [ -z "$(catalogue_cluster)" ]; then
  say "creating cluster ${PGV}/main"; pg_createcluster "$PGV" main --port "$PORT" >/dev/null
fi
read -r cver cname cport cstatus _ < <(catalogue_cluster)
if [ "$cstatus" != online ]; then
  say "starting cluster ${cver}/${cname}"
  pg_ctlcluster --skip-systemctl-redirect "$cver" "$cname" start
fi
[ "$cport" = "$PORT" ] || die "cluster ${cver}/${cname} listens on ${cport}, not ${PORT}; set EMBCAT_DB_PORT=${cport}"

su_psql() { runuser -u postgres -- psql -p "$PORT" -XAtq -v ON_ERROR_STOP=1 "$@"; }
tune_cluster

if [ -z "$(su_psql -c "select 1 from pg_roles where rolname='${ROLE}'")" ]; then
  su_psql -c "CREATE ROLE ${ROLE} LOGIN CREATEDB CREATEROLE PASSWORD '${PASSWORD}'"; say "created role ${ROLE}"
fi
for d in "$DB" "$TEMPLATE"; do
  if [ -z "$(su_psql -c "select 1 from pg_database where datname='${d}'")" ]; then
    su_psql -c "CREATE DATABASE ${d} OWNER ${ROLE}"; say "created database ${d}"
  fi
  su_psql -d "$d" -c "CREATE EXTENSION IF NOT EXISTS postgis; CREATE EXTENSION IF NOT EXISTS vector; CREATE EXTENSION IF NOT EXISTS btree_gist;"
done
su_psql -c "ALTER DATABASE ${TEMPLATE} WITH IS_TEMPLATE true" >/dev/null

msg=$(check_url "$DEFAULT_URL") || die "provisioned, but the check failed: ${msg}"
say "ready: ${DEFAULT_URL} (${msg})"
