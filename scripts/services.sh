#!/usr/bin/env bash
# The real servers of the integration tests, on 127.0.0.1: PostgreSQL (Debian's package), an
# MLflow tracking server whose backend store is that PostgreSQL, and a Prefect server (whose
# own database is PostgreSQL too).
#
#   scripts/services.sh start    install missing Debian packages (scripts/system_packages.sh: PostgreSQL
#                                among them), start all three, wait until healthy
#   scripts/services.sh stop     stop what `start` started
#   scripts/services.sh env      print `export MEDIMG_TEST_...` lines for the tests (eval them)
#   scripts/services.sh status   say what is running
#
# Idempotent: `start` twice leaves the running servers alone, `stop` twice is harmless.
# Everything lives in the state dir ($MEDIMG_SERVICES_DIR, default .services/ in the
# checkout, git-ignored): the PostgreSQL cluster, MLflow's artifacts, Prefect's home, logs,
# pid files, the ports (free ports chosen on the first start and kept) and the generated
# database password. Delete the folder (after `stop`) to start from nothing.
# As root, PostgreSQL runs as the `postgres` user that Debian's package creates.
# Used by .ci/run and by `make test` (when MEDIMG_TEST_PREFECT_API_URL is not set already).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${MEDIMG_SERVICES_DIR:-$ROOT/.services}"
VENV="${MEDIMG_VENV:-$ROOT/.venv}"
HOST=127.0.0.1
DB_USER=medimg
START_TIMEOUT="${MEDIMG_SERVICES_TIMEOUT:-180}"

log() { echo "services: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pg_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    [[ -n "$dir" && -x "$dir/initdb" ]] && echo "$dir"
}

# Run a PostgreSQL server binary as a user it accepts (it refuses root).
as_pg() {
    if [[ "$(id -u)" -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Ports and password are chosen once and kept, so `env` gives the same URIs across restarts.
load_config() {
    mkdir -p "$STATE"
    if [[ ! -f "$STATE/config.env" ]]; then
        local password
        password="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))')"
        umask 077
        cat >"$STATE/config.env" <<EOF
PG_PORT=$(free_port)
MLFLOW_PORT=$(free_port)
PREFECT_PORT=$(free_port)
DB_PASSWORD=$password
EOF
        umask 022
    fi
    # shellcheck disable=SC1091
    source "$STATE/config.env"
    [[ "${1:-}" == check-ports ]] && reassign_busy_ports
    PG_URI="postgresql+psycopg2://$DB_USER:$DB_PASSWORD@$HOST:$PG_PORT"
}

port_busy() {
    "$VENV/bin/python" -c 'import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$1"
}

# A kept port that something else took meanwhile (only checked while our server is down) is replaced.
reassign_busy_ports() {
    local var pidfile changed=0
    for var in PG_PORT MLFLOW_PORT PREFECT_PORT; do
        case "$var" in
            PG_PORT) [[ -f "$(cat "$STATE/pgdata.path" 2>/dev/null || echo /nonexistent)/postmaster.pid" ]] && continue ;;
            MLFLOW_PORT) pidfile="$STATE/mlflow.pid"; alive "$pidfile" && continue ;;
            PREFECT_PORT) pidfile="$STATE/prefect.pid"; alive "$pidfile" && continue ;;
        esac
        if port_busy "${!var}"; then
            log "port ${!var} ($var) is taken by another program: choosing a new one"
            printf -v "$var" '%s' "$(free_port)"
            changed=1
        fi
    done
    if ((changed)); then
        umask 077
        printf 'PG_PORT=%s\nMLFLOW_PORT=%s\nPREFECT_PORT=%s\nDB_PASSWORD=%s\n' \
            "$PG_PORT" "$MLFLOW_PORT" "$PREFECT_PORT" "$DB_PASSWORD" >"$STATE/config.env"
        umask 022
    fi
}

# The cluster's folder: in the state dir, unless (as root) the postgres user cannot reach it.
pg_data_dir() {
    if [[ -f "$STATE/pgdata.path" ]]; then
        cat "$STATE/pgdata.path"
        return
    fi
    local dir="$STATE/postgres"
    if [[ "$(id -u)" -eq 0 ]] && ! runuser -u postgres -- test -x "$STATE"; then
        dir="/var/tmp/medimg-services-$(echo -n "$STATE" | md5sum | cut -c1-12)/postgres"
        log "the postgres user cannot enter $STATE: the cluster goes to $dir"
    fi
    echo "$dir" >"$STATE/pgdata.path"
    echo "$dir"
}

start_postgres() {
    local bin data
    bin="$(pg_bin)"
    data="$(pg_data_dir)"
    if [[ ! -f "$data/PG_VERSION" ]]; then
        log "creating a PostgreSQL cluster in $data"
        mkdir -p "$data"
        local pwfile="$data.pw"
        printf '%s\n' "$DB_PASSWORD" >"$pwfile"
        if [[ "$(id -u)" -eq 0 ]]; then
            chown postgres: "$data" "$pwfile"
            [[ "$(dirname "$data")" == "$STATE" ]] || chown postgres: "$(dirname "$data")"
        fi
        chmod 700 "$data"
        chmod 600 "$pwfile"
        as_pg "$bin/initdb" -D "$data" -U "$DB_USER" --pwfile="$pwfile" --auth-local=scram-sha-256 \
            --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$STATE/initdb.log" 2>&1 \
            || { rm -f "$pwfile"; cat "$STATE/initdb.log" >&2; die "initdb failed"; }
        rm -f "$pwfile"
    fi
    if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "PostgreSQL already running ($data)"
    else
        # TCP on 127.0.0.1 only, no Unix socket (short of path-length and permission trouble).
        as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
            -o "-c listen_addresses=$HOST -c port=$PG_PORT -c unix_socket_directories=''" start >&2 \
            || { tail -n 30 "$data/server.log" >&2 || true; die "PostgreSQL did not start"; }
        log "PostgreSQL on $HOST:$PG_PORT"
    fi
    local db
    for db in mlflow prefect; do
        if ! PGPASSWORD="$DB_PASSWORD" "$bin/psql" -h "$HOST" -p "$PG_PORT" -U "$DB_USER" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
            PGPASSWORD="$DB_PASSWORD" "$bin/createdb" -h "$HOST" -p "$PG_PORT" -U "$DB_USER" "$db"
            log "created database $db"
        fi
    done
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Start "$@" in its own session (so `stop` can end its whole process group) unless it runs.
launch() {
    local name="$1"
    shift
    if alive "$STATE/$name.pid"; then
        log "$name already running (pid $(cat "$STATE/$name.pid"))"
        return
    fi
    setsid "$@" >"$STATE/$name.log" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
    log "$name started (pid $!, log $STATE/$name.log)"
}

wait_healthy() {
    local name="$1" url="$2" deadline=$((SECONDS + START_TIMEOUT))
    until "$VENV/bin/python" - "$url" <<'EOF' 2>/dev/null; do
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
    sys.exit(0 if response.status == 200 else 1)
EOF
        if ! alive "$STATE/$name.pid"; then
            tail -n 40 "$STATE/$name.log" >&2 || true
            die "$name exited before answering on $url"
        fi
        ((SECONDS < deadline)) || { tail -n 40 "$STATE/$name.log" >&2 || true; die "$name not healthy after ${START_TIMEOUT}s ($url)"; }
        sleep 1
    done
    log "$name healthy: $url"
}

start() {
    [[ -x "$VENV/bin/mlflow" && -x "$VENV/bin/prefect" ]] || die "$VENV has no mlflow/prefect: run \`make install\` first"
    "$VENV/bin/python" -c 'import psycopg2' 2>/dev/null || die "psycopg2 missing in $VENV: run \`make install\`"
    # PostgreSQL, with the suite's other Debian packages: installs only what is missing (messages to stderr).
    "$ROOT/scripts/system_packages.sh" >&2
    [[ -n "$(pg_bin)" ]] || die "no initdb under /usr/lib/postgresql/*/bin after scripts/system_packages.sh"
    load_config check-ports
    start_postgres
    mkdir -p "$STATE/mlflow-artifacts" "$STATE/prefect"
    launch mlflow env MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
        "$VENV/bin/mlflow" server --backend-store-uri "$PG_URI/mlflow" \
        --artifacts-destination "$STATE/mlflow-artifacts" --host "$HOST" --port "$MLFLOW_PORT" --workers 1
    launch prefect env PREFECT_HOME="$STATE/prefect" \
        PREFECT_SERVER_DATABASE_CONNECTION_URL="postgresql+asyncpg://$DB_USER:$DB_PASSWORD@$HOST:$PG_PORT/prefect" \
        PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=true PREFECT_SERVER_UI_ENABLED="${MEDIMG_PREFECT_UI:-false}" \
        "$VENV/bin/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
    wait_healthy mlflow "http://$HOST:$MLFLOW_PORT/health"
    wait_healthy prefect "http://$HOST:$PREFECT_PORT/api/health"
    start_dask  # issue 17
}

stop_one() {
    local name="$1" pid
    if alive "$STATE/$name.pid"; then
        pid="$(cat "$STATE/$name.pid")"
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
        log "$name stopped"
    fi
    rm -f "$STATE/$name.pid"
}

stop() {
    [[ -d "$STATE" ]] || return 0
    stop_dask  # issue 17
    stop_one prefect
    stop_one mlflow
    local bin data
    bin="$(pg_bin || true)"
    if [[ -n "$bin" && -f "$STATE/pgdata.path" ]]; then
        data="$(cat "$STATE/pgdata.path")"
        if [[ -f "$data/postmaster.pid" ]] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
            as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >&2 && log "PostgreSQL stopped"
        fi
    fi
}

print_env() {
    [[ -f "$STATE/config.env" ]] || die "not started: run \`scripts/services.sh start\`"
    load_config
    echo "export MEDIMG_TEST_MLFLOW_URI=http://$HOST:$MLFLOW_PORT"
    echo "export MEDIMG_TEST_PREFECT_API_URL=http://$HOST:$PREFECT_PORT/api"
    echo "export MEDIMG_TEST_MLFLOW_DB_URI=$PG_URI/mlflow"
    dask_env  # issue 17
}

status() {
    load_config
    local name
    for name in mlflow prefect; do
        if alive "$STATE/$name.pid"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; fi
    done
    local bin data
    bin="$(pg_bin || true)"
    data="$(cat "$STATE/pgdata.path" 2>/dev/null || true)"
    if [[ -n "$bin" && -n "$data" ]] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        echo "postgresql: running ($HOST:$PG_PORT, $data)"
    else
        echo "postgresql: stopped"
    fi
    dask_status  # issue 17
}

# --------------------------------------------------------------------------- Dask (issue 17)
# A Dask scheduler and $MEDIMG_DASK_WORKERS (2) workers on 127.0.0.1 for `medimg tune --dask` in the integration
# tests: separate processes (`dask scheduler`, one `dask worker --nworkers 1 --nthreads 1` each), the checkout on
# their PYTHONPATH (the scheduler and the workers unpickle the trials' Prefect tasks from tasks/ and medimg/), torch
# at one thread each. The scheduler's
# port is DASK_PORT in config.env (added on the first start after an upgrade); the `optuna` database of the
# PostgreSQL server holds the tests' studies.
DASK_WORKERS="${MEDIMG_DASK_WORKERS:-2}"

dask_config() {
    if [[ -z "${DASK_PORT:-}" ]]; then
        DASK_PORT="$(free_port)"
        echo "DASK_PORT=$DASK_PORT" >>"$STATE/config.env"
    elif ! alive "$STATE/dask-scheduler.pid" && port_busy "$DASK_PORT"; then
        log "port $DASK_PORT (DASK_PORT) is taken by another program: choosing a new one"
        DASK_PORT="$(free_port)"
        sed -i "s/^DASK_PORT=.*/DASK_PORT=$DASK_PORT/" "$STATE/config.env"
    fi
    DASK_ADDRESS="tcp://$HOST:$DASK_PORT"
}

dask_workers_ready() {
    "$VENV/bin/python" - "$DASK_ADDRESS" "$DASK_WORKERS" <<'EOF'
import sys
from distributed import Client
with Client(sys.argv[1], timeout=5) as client:
    sys.exit(0 if len(client.scheduler_info(n_workers=-1)["workers"]) >= int(sys.argv[2]) else 1)
EOF
}

start_dask() {
    dask_config
    local bin i name deadline=$((SECONDS + START_TIMEOUT))
    bin="$(pg_bin)"
    if ! PGPASSWORD="$DB_PASSWORD" "$bin/psql" -h "$HOST" -p "$PG_PORT" -U "$DB_USER" -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'optuna'" | grep -q 1; then
        PGPASSWORD="$DB_PASSWORD" "$bin/createdb" -h "$HOST" -p "$PG_PORT" -U "$DB_USER" optuna
        log "created database optuna"
    fi
    # the scheduler unpickles the task graph too: it needs the same code as the client and the workers
    launch dask-scheduler env PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
        "$VENV/bin/dask" scheduler --host "$HOST" --port "$DASK_PORT" --no-dashboard
    for i in $(seq 1 "$DASK_WORKERS"); do
        mkdir -p "$STATE/dask-worker-$i"
        launch "dask-worker-$i" env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
            "$VENV/bin/dask" worker "$DASK_ADDRESS" --nworkers 1 --nthreads 1 --host "$HOST" --no-dashboard \
            --name "medimg-$i" --local-directory "$STATE/dask-worker-$i"
    done
    until dask_workers_ready 2>/dev/null; do
        for name in dask-scheduler $(seq -f "dask-worker-%g" 1 "$DASK_WORKERS"); do
            alive "$STATE/$name.pid" || { tail -n 40 "$STATE/$name.log" >&2 || true; die "$name exited"; }
        done
        ((SECONDS < deadline)) || die "Dask: $DASK_WORKERS worker(s) not connected to $DASK_ADDRESS after ${START_TIMEOUT}s"
        sleep 1
    done
    log "Dask scheduler $DASK_ADDRESS with $DASK_WORKERS worker(s)"
}

stop_dask() {
    local i
    for i in $(seq 1 "$DASK_WORKERS"); do stop_one "dask-worker-$i"; done
    stop_one dask-scheduler
}

dask_env() {
    dask_config
    echo "export MEDIMG_TEST_DASK_ADDRESS=$DASK_ADDRESS"
    echo "export MEDIMG_TEST_OPTUNA_DB_URI=$PG_URI/optuna"
}

dask_status() {
    local name
    for name in dask-scheduler $(seq -f "dask-worker-%g" 1 "$DASK_WORKERS"); do
        if alive "$STATE/$name.pid"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; fi
    done
}

# --------------------------------------------------------------------------- end of Dask (issue 17)

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) print_env ;;
    status) status ;;
    *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
