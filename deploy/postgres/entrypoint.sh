#!/bin/sh
# Entrypoint of BASE's PostgreSQL image (built by scripts/build-postgres-image.sh).
#
# The image has no coreutils beyond rm and mv, so this script sticks to dash
# builtins. Contract (docs/postgres-image.md):
#   - POSTGRES_PASSWORD_FILE names the file holding the password of the
#     superuser `base` (a Docker secret); without it the container refuses
#     to start. The file's first line is the password; it is re-applied on
#     every start, so rotating the secret and restarting rotates the password.
#   - The cluster lives in /var/lib/postgresql/data/pgdata (the volume is
#     mounted at /var/lib/postgresql/data). It is created on first start
#     in a scratch directory and renamed into place only once the `base`
#     database exists, so a failed first start leaves nothing half-written.
#   - TCP clients from anywhere must authenticate with scram-sha-256.
#   - SIGTERM (what `docker stop` and Swarm send) is turned into PostgreSQL's
#     fast shutdown (SIGINT): PostgreSQL's own SIGTERM is a "smart" shutdown
#     that waits for every client to disconnect, which a pooled client never
#     does, so the stop would end in SIGKILL and crash recovery.
set -eu

bin=/usr/lib/postgresql/15/bin
volume=/var/lib/postgresql/data
pgdata="$volume/pgdata"
scratch="$volume/pgdata.init"

log() { echo "base-postgres: $*" >&2; }
die() { log "$*"; exit 1; }

[ -n "${POSTGRES_PASSWORD_FILE:-}" ] ||
    die "POSTGRES_PASSWORD_FILE is not set: give the password as a Docker secret and set POSTGRES_PASSWORD_FILE=/run/secrets/<name>; refusing to start without a password"
[ -f "$POSTGRES_PASSWORD_FILE" ] && [ -r "$POSTGRES_PASSWORD_FILE" ] ||
    die "POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE is not a readable file (is the secret attached to the service?); refusing to start"
password=""
# `read` fails on a last line without a newline but still fills the variable.
IFS= read -r password <"$POSTGRES_PASSWORD_FILE" || true
[ -n "$password" ] ||
    die "POSTGRES_PASSWORD_FILE=$POSTGRES_PASSWORD_FILE is empty (the password is its first line); refusing to start"

# The password as an SQL string literal: every ' doubled (standard strings,
# so backslashes are literal). Done with parameter expansion: no sed here.
quoted=""
rest="$password"
while :; do
    case "$rest" in
        *"'"*) quoted="$quoted${rest%%"'"*}''"; rest="${rest#*"'"}" ;;
        *) quoted="$quoted$rest"; break ;;
    esac
done

# Runs SQL from stdin in single-user mode against cluster $1. Single-user mode
# exits 0 even when a statement fails, so its stderr is scanned for ERROR/FATAL.
# Statements are never logged (log_min_error_statement=panic): one of them
# carries the password.
single() {
    errors="/tmp/single-user.err"
    status=0
    "$bin/postgres" --single -D "$1" -c listen_addresses= \
        -c log_min_error_statement=panic -c log_statement=none base >/dev/null 2>"$errors" || status=$?
    failed=""
    while IFS= read -r line; do
        case "$line" in
            *ERROR:*|*FATAL:*|*PANIC:*) failed="$failed $line" ;;
        esac
    done <"$errors"
    rm -f "$errors"
    [ "$status" -eq 0 ] && [ -z "$failed" ] || die "$2 failed (exit $status):$failed"
}

if [ ! -s "$pgdata/PG_VERSION" ]; then
    if [ -e "$pgdata" ]; then
        die "$pgdata exists but holds no PostgreSQL cluster (no PG_VERSION); move it away or empty the volume; refusing to overwrite it"
    fi
    # A previous first start that died part-way left only the scratch dir.
    rm -rf "$scratch"
    log "initialising a new cluster in $pgdata (first start on this volume)"
    # The superuser is `base`; initdb runs a throwaway `postgres` database too.
    "$bin/initdb" --pgdata="$scratch" --username=base --pwfile="$POSTGRES_PASSWORD_FILE" \
        --auth-local=scram-sha-256 --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C --no-instructions >/dev/null ||
        die "initdb failed; nothing was kept (the scratch directory is removed on the next start)"
    # initdb allows only loopback TCP clients; BASE's services reach the
    # database over an overlay, so every address is allowed, with scram-sha-256
    # and never trust. Local (socket) connections need the password too.
    {
        echo "# Written by BASE's PostgreSQL image on first start."
        echo "local all all scram-sha-256"
        echo "host  all all 0.0.0.0/0 scram-sha-256"
        echo "host  all all ::/0      scram-sha-256"
    } >"$scratch/pg_hba.conf"
    {
        echo "# BASE's PostgreSQL image"
        echo "listen_addresses = '*'"
        echo "port = 5432"
        echo "password_encryption = 'scram-sha-256'"
        # The JIT provider (LLVM, ~60 MB) is not in the image.
        echo "jit = off"
        echo "timezone = 'UTC'"
        echo "log_timezone = 'UTC'"
    } >>"$scratch/postgresql.conf"
    # Single-user mode needs an existing database to attach to: `postgres`.
    "$bin/postgres" --single -D "$scratch" -c listen_addresses= postgres >/dev/null 2>/tmp/createdb.err <<'SQL' || die "creating the database 'base' failed"
CREATE DATABASE base OWNER base;
SQL
    while IFS= read -r line; do
        case "$line" in *ERROR:*|*FATAL:*) die "creating the database 'base' failed: $line" ;; esac
    done </tmp/createdb.err
    rm -f /tmp/createdb.err
    mv "$scratch" "$pgdata"
    log "cluster initialised"
fi

# The secret is authoritative: re-apply it on every start.
single "$pgdata" "setting the password of role 'base' from POSTGRES_PASSWORD_FILE" <<SQL
ALTER ROLE base WITH PASSWORD '$quoted';
SQL
unset password quoted rest

"$bin/postgres" -D "$pgdata" &
pid=$!
trap 'log "stop requested: fast shutdown"; kill -INT "$pid" 2>/dev/null || true' TERM INT
# `wait` returns early (status > 128) when a trapped signal arrives; keep
# waiting until the server itself has exited, then exit with its status.
while :; do
    status=0
    wait "$pid" || status=$?
    if ! kill -0 "$pid" 2>/dev/null; then
        exit "$status"
    fi
done
