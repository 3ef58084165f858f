#!/usr/bin/env bash
# Run a project-local PostgreSQL 15 and RabbitMQ (Debian's binaries) for sluice's
# tests and benchmarks: data under <repo>/.local/, bound to 127.0.0.1 on their own ports.
# Usage: tools/servers.sh start|stop|status|env|rabbitmqctl ARGS...
#        tools/servers.sh kill-rabbitmq | restart-postgres fast|immediate   (fault injection)
# Env:   SLUICE_LOCAL_DIR (default <repo>/.local), SLUICE_PG_PORT, SLUICE_AMQP_PORT:
#        another directory and ports run a second, independent pair of servers
#        (tests/integration/test_faults.py kills and restarts its own that way).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
if [[ -n ${SLUICE_LOCAL_DIR:-} ]]; then
    LOCAL=$(readlink -m "$SLUICE_LOCAL_DIR")
else
    LOCAL=$REPO/.local
fi

PG_PORT=${SLUICE_PG_PORT:-35432}
AMQP_PORT=${SLUICE_AMQP_PORT:-35672}
DIST_PORT=${SLUICE_DIST_PORT:-$((AMQP_PORT + 1))}    # Erlang distribution of our node
EPMD_PORT=${SLUICE_EPMD_PORT:-$((AMQP_PORT - 1303))} # 34369 for the default AMQP port
CTL_DIST_MIN=$((AMQP_PORT + 2))                      # rabbitmqctl's own transient node;
CTL_DIST_MAX=$((AMQP_PORT + 11))                     # its default range starts at 35672
START_TIMEOUT=${SLUICE_START_TIMEOUT:-90}

PG_BIN=/usr/lib/postgresql/15/bin
PG_ROLE=sluice
PG_PASSWORD=sluice-local-pw
PG_DB=sluice

RMQ_BIN=/usr/lib/rabbitmq/bin
RMQ_DIR=$LOCAL/rabbitmq
RMQ_NODE=sluice@localhost
RMQ_PIDFILE=$RMQ_DIR/rabbitmq.pid
EPMD_PIDFILE=$RMQ_DIR/epmd.pid

# Marker in the environment of every process we launch, so pids read from
# pidfiles are only ever signalled if they really are ours.
TAG="SLUICE_SERVERS=$LOCAL"

# Our own connections must not be redirected by a caller's libpq settings.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE \
    PGSERVICE PGSERVICEFILE PGOPTIONS PGSSLMODE PGDATA PGCONNECT_TIMEOUT

if ((EUID == 0)); then PG_USER=postgres; else PG_USER=$(id -un); fi

die() { echo "servers.sh: $*" >&2; exit 1; }

for p in PG_PORT AMQP_PORT DIST_PORT EPMD_PORT START_TIMEOUT; do
    [[ ${!p} =~ ^[0-9]+$ ]] || die "$p must be a number, got '${!p}'"
done

# ---------------------------------------------------------------- helpers

# pid from a pidfile, if that process is alive and was launched by us.
our_pid() {
    local pid
    [[ -r $1 ]] || return 1
    pid=$(<"$1") # RabbitMQ writes it without a trailing newline
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    alive "$pid" || return 1
    grep -qzxF -- "$TAG" "/proc/$pid/environ" 2>/dev/null || return 1
    echo "$pid"
}

# Alive and not a zombie waiting to be reaped.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# TERM a pid (then KILL after $2 seconds) and wait until it is gone.
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < $2 * 10; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    die "pid $pid did not exit after SIGKILL"
}

# Print an export line, single-quoting the value only when needed.
export_line() {
    if [[ $2 =~ ^[A-Za-z0-9_@%+=:,./-]*$ ]]; then
        printf 'export %s=%s\n' "$1" "$2"
    else
        printf "export %s='%s'\n" "$1" "${2//\'/\'\\\'\'}"
    fi
}

# Serialise start/stop of concurrent callers (fd 9 is closed for servers).
take_lock() {
    if [[ ! -d $LOCAL ]]; then
        mkdir -p "$(dirname "$LOCAL")"
        mkdir -m 755 "$LOCAL" # traversable even under umask 077
    fi
    exec 9>"$LOCAL/.servers.lock"
    flock -w 300 9 || die "timed out waiting for $LOCAL/.servers.lock"
}

# ---------------------------------------------------------------- postgres

# Run a PostgreSQL binary as the unprivileged server user.
as_pg() {
    if ((EUID == 0)); then
        (cd / && runuser -u "$PG_USER" -- "$@")
    else
        "$@"
    fi
}

pg_relocated_base() {
    local key=$REPO # the default directory keeps the name it always had
    [[ $LOCAL == "$REPO/.local" ]] || key=$LOCAL
    echo "/var/tmp/sluice-pg-$(printf '%s' "$key" | sha256sum | cut -c1-10)"
}

# The server user can't reach .local (e.g. a root-only clone), or the socket
# path "<base>/run/.s.PGSQL.<port>" would exceed the ~107-byte limit.
pg_needs_relocation() {
    local probe=$LOCAL
    [[ -d $probe ]] || probe=$REPO
    if ((EUID == 0)) && ! runuser -u "$PG_USER" -- test -x "$probe" 2>/dev/null; then
        return 0
    fi
    ((${#LOCAL} + 25 > 100))
}

# Directory holding data/, run/ (socket) and postgresql.log; no side effects.
pg_base() {
    if [[ -L $LOCAL/pg || -d $LOCAL/pg ]]; then
        readlink -m "$LOCAL/pg"
    elif pg_needs_relocation; then
        pg_relocated_base
    else
        echo "$LOCAL/pg"
    fi
}

PG_BASE=$(pg_base)
PG_DATA=$PG_BASE/data
PG_SOCK=$PG_BASE/run
PG_LOG=$LOCAL/pg/postgresql.log

pg_setup_dirs() {
    local uid
    if [[ ! -L $LOCAL/pg && ! -d $LOCAL/pg ]]; then
        if pg_needs_relocation; then
            ln -s "$(pg_relocated_base)" "$LOCAL/pg"
        else
            mkdir -m 700 "$LOCAL/pg"
        fi
    fi
    PG_BASE=$(readlink -m "$LOCAL/pg")
    PG_DATA=$PG_BASE/data
    PG_SOCK=$PG_BASE/run
    [[ -d $PG_BASE ]] || mkdir -m 700 "$PG_BASE"
    [[ ! -L $PG_BASE ]] || die "$PG_BASE must not be a symlink"
    uid=$(stat -c %u "$PG_BASE")
    if [[ $uid != "$(id -u "$PG_USER")" && $uid != "$EUID" ]]; then
        die "$PG_BASE is owned by uid $uid, expected $PG_USER; remove it"
    fi
    [[ -d $PG_SOCK ]] || mkdir -m 700 "$PG_SOCK"
    if ((EUID == 0)); then
        chown "$PG_USER:" "$PG_BASE" "$PG_SOCK"
        chmod 700 "$PG_BASE"
    fi
}

pg_write_conf() {
    local conf=$PG_DATA/sluice.conf
    cat >"$conf" <<EOF
# Written by tools/servers.sh on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '${PG_SOCK//\'/\'\'}'
max_connections = 200
# bench/run.py measures latency to the commit: pg_xact_commit_timestamp(xmin)
track_commit_timestamp = on
EOF
    if ((EUID == 0)); then chown "$PG_USER:" "$conf"; fi
}

pg_running() {
    [[ -f $PG_DATA/PG_VERSION ]] && as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1
}

pg_answering() {
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 3 >/dev/null 2>&1
}

psql_admin() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres "$@"
}

pg_ensure_role_db() {
    psql_admin -d postgres >/dev/null <<EOF || die "could not create role/database $PG_DB (see $PG_LOG)"
SELECT 'CREATE ROLE $PG_ROLE' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE')\\gexec
ALTER ROLE $PG_ROLE WITH LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
SELECT 'CREATE DATABASE $PG_DB OWNER $PG_ROLE' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$PG_DB')\\gexec
EOF
}

pg_start() {
    local t0=$SECONDS deadline
    pg_setup_dirs
    if pg_running; then
        # Maybe still starting up / recovering, or just died: wait it out.
        deadline=$((SECONDS + START_TIMEOUT))
        while pg_running && ! pg_answering && ((SECONDS < deadline)); do sleep 0.5; done
        if pg_answering; then
            pg_ensure_role_db
            echo "postgres: already running on 127.0.0.1:$PG_PORT"
            return
        fi
        ! pg_running ||
            die "postgres is running but not answering on 127.0.0.1:$PG_PORT (started with another port? run 'tools/servers.sh stop'; see $PG_LOG)"
    fi
    if [[ ! -f $PG_DATA/PG_VERSION ]]; then
        as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth-local=trust \
            --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 \
            >"$PG_BASE/initdb.log" 2>&1 9>&- || die "initdb failed, see $PG_BASE/initdb.log"
        echo "include_if_exists = 'sluice.conf'" >>"$PG_DATA/postgresql.conf"
    fi
    pg_write_conf
    if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_BASE/postgresql.log" -w \
        -t "$START_TIMEOUT" -s start >/dev/null 2>&1 9>&-; then
        tail -n 5 "$PG_LOG" >&2 || true
        die "postgres failed to start on 127.0.0.1:$PG_PORT (or took over ${START_TIMEOUT}s), see $PG_LOG"
    fi
    pg_answering || die "postgres started but does not answer on 127.0.0.1:$PG_PORT, see $PG_LOG"
    pg_ensure_role_db
    echo "postgres: started on 127.0.0.1:$PG_PORT in $((SECONDS - t0))s (data $LOCAL/pg/data, log $PG_LOG)"
}

pg_stop() {
    pg_running || return 0
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 -s stop >/dev/null ||
        die "pg_ctl stop failed, see $PG_LOG"
}

# Fault injection: restart with shutdown mode $1 (fast: sessions are
# terminated, then a checkpoint; immediate: no checkpoint, crash recovery
# at start).
pg_restart() {
    [[ $1 == fast || $1 == immediate ]] || die "restart-postgres: mode must be fast or immediate"
    pg_running || die "postgres is not running (tools/servers.sh start)"
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_BASE/postgresql.log" -m "$1" -w \
        -t "$START_TIMEOUT" -s restart >/dev/null 2>&1 9>&- ||
        die "pg_ctl restart -m $1 failed, see $PG_LOG"
    pg_answering || die "postgres restarted but does not answer on 127.0.0.1:$PG_PORT, see $PG_LOG"
}

# ---------------------------------------------------------------- rabbitmq

# The one place that defines how we talk to our node: used by the server,
# epmd and every rabbitmqctl call.  Call it in a subshell (it changes HOME).
rabbit_env() {
    local v
    while read -r v; do
        case $v in RABBITMQ_* | ERL_*) unset "$v" ;; esac
    done < <(compgen -e)
    export "${TAG?}"
    export HOME=$RMQ_DIR # .erlang.cookie lives here
    export RABBITMQ_NODENAME=$RMQ_NODE
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$AMQP_PORT
    export RABBITMQ_DIST_PORT=$DIST_PORT
    export ERL_EPMD_PORT=$EPMD_PORT
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_CONF_ENV_FILE=$RMQ_DIR/rabbitmq-env.conf # not /etc/rabbitmq's
    export RABBITMQ_CONFIG_FILE=$RMQ_DIR/rabbitmq.conf
    export RABBITMQ_ADVANCED_CONFIG_FILE=$RMQ_DIR/advanced.config
    export RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_DIR/enabled_plugins
    export RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia
    export RABBITMQ_LOG_BASE=$RMQ_DIR/log
    export RABBITMQ_PID_FILE=$RMQ_PIDFILE
    export RABBITMQ_CTL_DIST_PORT_MIN=$CTL_DIST_MIN
    export RABBITMQ_CTL_DIST_PORT_MAX=$CTL_DIST_MAX
    # Erlang distribution listeners (server and CLI) on loopback only.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
    export RABBITMQ_CTL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
    export ERL_CRASH_DUMP=$RMQ_DIR/log/erl_crash.dump
}

rmqctl() {
    (rabbit_env && exec "$RMQ_BIN/rabbitmqctl" "$@")
}

epmd_answering() {
    epmd -port "$EPMD_PORT" -names >/dev/null 2>&1
}

# AMQP 0-9-1 handshake: send the protocol header, expect a method frame
# (type 1, channel 0) carrying connection.start.
amqp_answering() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        [[ $(head -c 3 <&3 | od -An -tx1 | tr -d " \n") == 010000 ]]
    ' _ "$AMQP_PORT" 2>/dev/null
}

rabbit_running() {
    our_pid "$RMQ_PIDFILE" >/dev/null
}

rabbit_write_conf() {
    mkdir -p "$RMQ_DIR/log" "$RMQ_DIR/mnesia"
    chmod 700 "$RMQ_DIR"
    cat >"$RMQ_DIR/rabbitmq.conf" <<EOF
# Written by tools/servers.sh on every start; edits are overwritten.
listeners.tcp.1 = 127.0.0.1:$AMQP_PORT
vm_memory_high_watermark.relative = 0.4
disk_free_limit.absolute = 200MB
log.console = false
log.file.level = info
EOF
    echo '[].' >"$RMQ_DIR/enabled_plugins"
    [[ -f $RMQ_DIR/advanced.config ]] || echo '[].' >"$RMQ_DIR/advanced.config"
    : >"$RMQ_DIR/rabbitmq-env.conf"
    if [[ ! -s $RMQ_DIR/.erlang.cookie ]]; then
        # Create it ourselves: server and CLI starting together must agree.
        rm -f "$RMQ_DIR/.erlang.cookie"
        (umask 077 && head -c 32 /dev/urandom | sha256sum | cut -c1-32 >"$RMQ_DIR/.erlang.cookie")
        chmod 400 "$RMQ_DIR/.erlang.cookie"
    fi
}

epmd_start() {
    local pid i
    if pid=$(our_pid "$EPMD_PIDFILE"); then
        epmd_answering && return
        stop_pid "$pid" 5 # ours, but on another port: replace it
    fi
    rm -f "$EPMD_PIDFILE"
    (rabbit_env && cd "$RMQ_DIR" &&
        exec setsid epmd -address 127.0.0.1 -port "$EPMD_PORT" \
            >>"$RMQ_DIR/log/epmd.log" 2>&1 </dev/null 9>&-) &
    pid=$!
    echo "$pid" >"$EPMD_PIDFILE"
    for ((i = 0; i < 100; i++)); do
        epmd_answering && return
        alive "$pid" ||
            die "epmd could not listen on 127.0.0.1:$EPMD_PORT (port in use? set SLUICE_EPMD_PORT), see $RMQ_DIR/log/epmd.log"
        sleep 0.1
    done
    die "epmd did not answer on 127.0.0.1:$EPMD_PORT, see $RMQ_DIR/log/epmd.log"
}

rabbit_start() {
    local t0=$SECONDS deadline wrapper
    local logs="$RMQ_DIR/log/$RMQ_NODE.log and $RMQ_DIR/log/console.log"
    mkdir -p "$RMQ_DIR"
    deadline=$((SECONDS + START_TIMEOUT))
    if rabbit_running; then
        # Ours is up (maybe still booting): don't launch a second node.
        until amqp_answering; do
            rabbit_running || break
            ((SECONDS < deadline)) ||
                die "rabbitmq is running but not answering on 127.0.0.1:$AMQP_PORT (started with another port? run 'tools/servers.sh stop'; see $logs)"
            sleep 0.5
        done
        if rabbit_running; then
            echo "rabbitmq: already running on 127.0.0.1:$AMQP_PORT"
            return
        fi
    fi
    rabbit_write_conf
    epmd_start
    rm -f "$RMQ_PIDFILE"
    (rabbit_env && cd "$RMQ_DIR" &&
        exec setsid nohup "$RMQ_BIN/rabbitmq-server" \
            >>"$RMQ_DIR/log/console.log" 2>&1 </dev/null 9>&-) &
    wrapper=$!
    deadline=$((SECONDS + START_TIMEOUT))
    until amqp_answering; do
        if ! alive "$wrapper"; then
            tail -n 5 "$RMQ_DIR/log/console.log" >&2 || true
            die "rabbitmq exited during startup, see $logs"
        fi
        ((SECONDS < deadline)) ||
            die "rabbitmq did not answer on 127.0.0.1:$AMQP_PORT within ${START_TIMEOUT}s, see $logs"
        sleep 0.5
    done
    rmqctl -q await_startup --timeout "$START_TIMEOUT" >/dev/null 2>&1 ||
        die "rabbitmq answers AMQP but rabbitmqctl cannot reach node $RMQ_NODE, see $logs"
    echo "rabbitmq: started on 127.0.0.1:$AMQP_PORT in $((SECONDS - t0))s (node $RMQ_NODE, logs $RMQ_DIR/log)"
}

rabbit_stop() {
    local pid
    if pid=$(our_pid "$RMQ_PIDFILE"); then
        stop_pid "$pid" 60 # SIGTERM makes RabbitMQ shut down gracefully
    fi
    rm -f "$RMQ_PIDFILE"
    if pid=$(our_pid "$EPMD_PIDFILE"); then
        stop_pid "$pid" 5
    fi
    rm -f "$EPMD_PIDFILE"
}

# Fault injection: SIGKILL our node, as a crash would; epmd stays. `start`
# brings it back (durable queues and persistent messages survive).
rabbit_kill() {
    local pid i
    pid=$(our_pid "$RMQ_PIDFILE") || die "rabbitmq is not running (tools/servers.sh start)"
    kill -KILL "$pid"
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    die "rabbitmq (pid $pid) did not exit after SIGKILL"
}

# ---------------------------------------------------------------- commands

cmd_start() {
    "$REPO/tools/deps.sh"
    take_lock
    pg_start
    rabbit_start
}

cmd_stop() {
    [[ -d $LOCAL ]] || return 0
    take_lock
    rabbit_stop
    pg_stop
}

cmd_status() {
    if pg_running; then
        if pg_answering; then
            echo "postgres: running on 127.0.0.1:$PG_PORT"
        else
            echo "postgres: running but not answering on 127.0.0.1:$PG_PORT"
        fi
    else
        echo "postgres: stopped (port $PG_PORT)"
    fi
    if rabbit_running; then
        if amqp_answering; then
            echo "rabbitmq: running on 127.0.0.1:$AMQP_PORT"
        else
            echo "rabbitmq: running but not answering on 127.0.0.1:$AMQP_PORT"
        fi
    else
        echo "rabbitmq: stopped (port $AMQP_PORT)"
    fi
}

cmd_env() {
    export_line RABBITMQ_URL "amqp://guest:guest@127.0.0.1:$AMQP_PORT/"
    export_line POSTGRES_DSN "postgresql://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
    export_line SLUICE_PG_PORT "$PG_PORT"
    export_line SLUICE_AMQP_PORT "$AMQP_PORT"
    export_line SLUICE_PG_ADMIN_DSN "host=$PG_SOCK port=$PG_PORT user=postgres dbname=$PG_DB"
}

usage() {
    echo "usage: $0 start|stop|status|env|rabbitmqctl ARGS...|kill-rabbitmq|restart-postgres fast|immediate" >&2
    exit 2
}

(($# >= 1)) || usage
case $1 in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    rabbitmqctl)
        shift
        rabbit_running || die "rabbitmq is not running (tools/servers.sh start)"
        rmqctl "$@"
        ;;
    kill-rabbitmq)
        take_lock
        rabbit_kill
        ;;
    restart-postgres)
        (($# == 2)) || usage
        take_lock
        pg_restart "$2"
        ;;
    *) usage ;;
esac
