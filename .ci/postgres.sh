#!/usr/bin/env bash
# Make a PostgreSQL server available on 127.0.0.1:5432 with role `bot`
# (password `bot`) owning database `bot_test`, using Debian's packaging
# (postgresql-common: pg_lsclusters / pg_createcluster / pg_ctlcluster).
#
# Idempotent: safe to run any number of times; starts a stopped cluster.
# stdout: exactly one line, the connection URL, so callers can do
#   export TEST_DATABASE_URL="$(bash .ci/postgres.sh)"
# Everything else (progress, errors) goes to stderr.
set -euo pipefail

PORT=5432
ROLE=bot
PASSWORD=bot
DB=bot_test
URL="postgresql://${ROLE}:${PASSWORD}@127.0.0.1:${PORT}/${DB}"

exec 3>&1 1>&2          # keep the real stdout on fd 3 for the URL only
cd /                    # the postgres user must be able to read the cwd
# A locale that always exists on Debian, so initdb / psql never trip on an
# unset or ungenerated one.
export LANG=C.UTF-8 LC_ALL=C.UTF-8

log() { echo "postgres.sh: $*"; }
die() { echo "postgres.sh: error: $*"; exit 1; }

# Run a command that may leave a server running in the background with every
# inherited descriptor above stderr closed (incl. fd 3 = our caller's stdout):
# otherwise the postmaster keeps the caller's `$(...)` pipe open forever.
detached() {
    (
        for fd in $(ls /proc/"$BASHPID"/fd); do
            [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
        done
        exec "$@"
    ) </dev/null
}

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
else
    command -v sudo >/dev/null || die "must run as root (or have sudo)"
    SUDO=(sudo -n)
fi

as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        if command -v runuser >/dev/null; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        sudo -n -u postgres -- "$@"
    fi
}

# Debian server binaries live under /usr/lib/postgresql/<ver>/bin; anything
# else on PATH (e.g. /usr/local/bin/pg_ctl) is deliberately not used.
server_versions() {
    local d
    for d in /usr/lib/postgresql/*/bin/postgres; do
        [ -x "$d" ] || continue
        d=${d#/usr/lib/postgresql/}
        echo "${d%%/*}"
    done | sort -n
}

# 1. Install the server if missing.
if [ -z "$(server_versions)" ] || ! command -v pg_ctlcluster >/dev/null \
   || ! command -v pg_lsclusters >/dev/null; then
    log "installing Debian package postgresql"
    export DEBIAN_FRONTEND=noninteractive
    if ! detached "${SUDO[@]}" apt-get install -y -q postgresql >/dev/null; then
        log "install failed; running apt-get update and retrying"
        "${SUDO[@]}" apt-get update -q >/dev/null
        detached "${SUDO[@]}" apt-get install -y -q postgresql >/dev/null
    fi
    [ -n "$(server_versions)" ] || die "no server under /usr/lib/postgresql after install"
fi

# 2. Find a Debian cluster on $PORT, or create one with the newest version.
find_cluster() {  # prints "ver name status" of the cluster on $PORT, if any
    pg_lsclusters -h | awk -v p="$PORT" '$3 == p { print $1, $2, $4; exit }'
}
cluster=$(find_cluster)
if [ -z "$cluster" ]; then
    ver=$(server_versions | tail -n 1)
    name=main
    if pg_lsclusters -h | awk -v v="$ver" -v n="$name" '$1 == v && $2 == n { f=1 } END { exit !f }'; then
        name=ci
    fi
    log "creating cluster $ver/$name on port $PORT"
    detached "${SUDO[@]}" pg_createcluster --port "$PORT" "$ver" "$name" >/dev/null
    cluster=$(find_cluster)
    [ -n "$cluster" ] || die "pg_createcluster did not produce a cluster on port $PORT"
fi
read -r ver name status <<<"$cluster"

# 3. Start it if it is not running.
if [[ "$status" != online* ]]; then
    log "starting cluster $ver/$name"
    detached "${SUDO[@]}" pg_ctlcluster "$ver" "$name" start \
        || die "could not start cluster $ver/$name (see /var/log/postgresql/postgresql-$ver-$name.log)"
fi

pg_isready_bin=/usr/lib/postgresql/$ver/bin/pg_isready
for _ in $(seq 60); do
    "$pg_isready_bin" -q -h 127.0.0.1 -p "$PORT" && break
    sleep 0.5
done
"$pg_isready_bin" -q -h 127.0.0.1 -p "$PORT" \
    || die "server not accepting TCP connections on 127.0.0.1:$PORT"

# 4. Role and database (re-asserting password/owner is harmless on reruns).
psql_admin() {
    as_postgres "/usr/lib/postgresql/$ver/bin/psql" -X -q -v ON_ERROR_STOP=1 \
        -p "$PORT" -d postgres "$@"
}
psql_admin <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
        CREATE ROLE $ROLE LOGIN PASSWORD '$PASSWORD';
    ELSE
        ALTER ROLE $ROLE LOGIN PASSWORD '$PASSWORD';
    END IF;
END
\$\$;
SQL
if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    log "creating database $DB"
    psql_admin -c "CREATE DATABASE $DB OWNER $ROLE"
else
    psql_admin -c "ALTER DATABASE $DB OWNER TO $ROLE"
fi

echo "$URL" >&3
