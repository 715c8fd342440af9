#!/usr/bin/env bash
# The real servers of the integration tests, on 127.0.0.1: PostgreSQL (Debian's package), an
# MLflow tracking server whose backend store is that PostgreSQL, a Prefect server (whose
# own database is PostgreSQL too), Orthanc (Debian's package, the PACS of `medimg serve`,
# with its DICOMweb plugin) and a Dask scheduler with two workers (`medimg tune --dask`; its
# Optuna studies in PostgreSQL's `optuna` database).
#
#   scripts/services.sh start [SERVICE...]   install missing Debian packages (scripts/system_packages.sh:
#                                            PostgreSQL and Orthanc among them), start the services (all
#                                            by default), wait until healthy
#   scripts/services.sh stop [SERVICE...]    stop what `start` started (all by default)
#   scripts/services.sh env                  print `export MEDIMG_...` lines for the tests (eval them)
#   scripts/services.sh status               say what is running
#
# SERVICE is postgres, mlflow, prefect, orthanc or dask (mlflow, prefect and dask start postgres too), e.g.
# `scripts/services.sh start orthanc` starts Orthanc alone.
#
# Idempotent: `start` twice leaves the running servers alone, `stop` twice is harmless.
# Everything lives in the state dir ($MEDIMG_SERVICES_DIR, default .services/ in the
# checkout, git-ignored): the PostgreSQL cluster, MLflow's artifacts, Prefect's home, Orthanc's
# configuration, storage and index, logs, pid files, the ports (free ports chosen on the first
# start and kept) and the generated passwords. Delete the folder (after `stop`) to start from nothing.
#
# Orthanc: HTTP Basic auth (user `medimg`, a generated password), RemoteAccessAllowed false (its HTTP
# server answers 127.0.0.1 only), DICOMweb at /dicom-web/, AET ORTHANC, StableAge
# $MEDIMG_ORTHANC_STABLE_AGE seconds (default 2). Orthanc 1.10 has no bind-address option: it listens
# on all interfaces (HTTP and DICOM ports; the DICOM port accepts a C-STORE from any host that
# reaches it), so run it on a machine whose firewall keeps those ports in, and connect to 127.0.0.1.
# As root, PostgreSQL runs as the `postgres` user that Debian's package creates.
# Used by .ci/run and by `make test` (when MEDIMG_TEST_PREFECT_API_URL is not set already).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${MEDIMG_SERVICES_DIR:-$ROOT/.services}"
VENV="${MEDIMG_VENV:-$ROOT/.venv}"
HOST=127.0.0.1
DB_USER=medimg
ORTHANC_USER=medimg
ORTHANC_AET=ORTHANC
ALL_SERVICES=(postgres mlflow prefect orthanc dask)
# Variables of config.env, in the order they are written.
CONFIG_VARS=(PG_PORT MLFLOW_PORT PREFECT_PORT DB_PASSWORD ORTHANC_HTTP_PORT ORTHANC_DICOM_PORT ORTHANC_PASSWORD)
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

# Ports and passwords are chosen once and kept, so `env` gives the same URIs across restarts.
# A config.env from an older version of this script gets the keys it lacks added.
load_config() {
    mkdir -p "$STATE"
    # shellcheck disable=SC1091
    [[ -f "$STATE/config.env" ]] && source "$STATE/config.env"
    local var missing=0
    for var in "${CONFIG_VARS[@]}"; do
        if [[ -z "${!var:-}" ]]; then
            case "$var" in
                *_PORT) printf -v "$var" '%s' "$(free_port)" ;;
                *PASSWORD) printf -v "$var" '%s' "$(new_password)" ;;
            esac
            missing=1
        fi
    done
    ((missing)) && write_config
    [[ "${1:-}" == check-ports ]] && reassign_busy_ports
    PG_URI="postgresql+psycopg2://$DB_USER:$DB_PASSWORD@$HOST:$PG_PORT"
}

new_password() {
    "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))'
}

write_config() {
    local var
    umask 077
    for var in "${CONFIG_VARS[@]}"; do
        printf '%s=%s\n' "$var" "${!var}"
    done >"$STATE/config.env"
    umask 022
}

port_busy() {
    "$VENV/bin/python" -c 'import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$1"
}

# A kept port that something else took meanwhile (only checked while our server is down) is replaced.
reassign_busy_ports() {
    local var changed=0
    for var in PG_PORT MLFLOW_PORT PREFECT_PORT ORTHANC_HTTP_PORT ORTHANC_DICOM_PORT; do
        case "$var" in
            PG_PORT) [[ -f "$(cat "$STATE/pgdata.path" 2>/dev/null || echo /nonexistent)/postmaster.pid" ]] && continue ;;
            MLFLOW_PORT) alive "$STATE/mlflow.pid" && continue ;;
            PREFECT_PORT) alive "$STATE/prefect.pid" && continue ;;
            ORTHANC_*) alive "$STATE/orthanc.pid" && continue ;;
        esac
        if port_busy "${!var}"; then
            log "port ${!var} ($var) is taken by another program: choosing a new one"
            printf -v "$var" '%s' "$(free_port)"
            changed=1
        fi
    done
    ((changed)) && write_config
    return 0
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

# Wait until GET $url answers 200; with a third argument USER, HTTP Basic auth as USER with the password in
# $AUTH_PASSWORD (passed in the environment, never on a command line).
wait_healthy() {
    local name="$1" url="$2" user="${3:-}" deadline=$((SECONDS + START_TIMEOUT))
    until AUTH_USER="$user" "$VENV/bin/python" - "$url" <<'PY' 2>/dev/null; do
import base64, os, sys, urllib.request
request = urllib.request.Request(sys.argv[1])
if os.environ.get("AUTH_USER"):
    token = base64.b64encode(f"{os.environ['AUTH_USER']}:{os.environ['AUTH_PASSWORD']}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
with urllib.request.urlopen(request, timeout=5) as response:
    sys.exit(0 if response.status == 200 else 1)
PY
        if ! alive "$STATE/$name.pid"; then
            tail -n 40 "$STATE/$name.log" >&2 || true
            die "$name exited before answering on $url"
        fi
        ((SECONDS < deadline)) || { tail -n 40 "$STATE/$name.log" >&2 || true; die "$name not healthy after ${START_TIMEOUT}s ($url)"; }
        sleep 0.2
    done
    log "$name healthy: $url"
}

# The DICOMweb plugin's shared library (Debian's orthanc-dicomweb), or $MEDIMG_ORTHANC_DICOMWEB_PLUGIN.
dicomweb_plugin() {
    local path
    for path in "${MEDIMG_ORTHANC_DICOMWEB_PLUGIN:-}" /usr/share/orthanc/plugins/libOrthancDicomWeb.so \
        /usr/lib/orthanc/libOrthancDicomWeb.so*; do
        [[ -n "$path" && -f "$path" ]] && { echo "$path"; return 0; }
    done
    return 1
}

# Orthanc's configuration, written on every start from config.env (ports, password) and the environment.
write_orthanc_config() {
    local plugin="$1"
    mkdir -p "$STATE/orthanc/storage" "$STATE/orthanc/index"
    umask 077
    ORTHANC_STATE="$STATE/orthanc" ORTHANC_PLUGIN="$plugin" ORTHANC_HTTP_PORT="$ORTHANC_HTTP_PORT" \
        ORTHANC_DICOM_PORT="$ORTHANC_DICOM_PORT" ORTHANC_USER="$ORTHANC_USER" ORTHANC_PASSWORD="$ORTHANC_PASSWORD" \
        ORTHANC_AET="$ORTHANC_AET" STABLE_AGE="${MEDIMG_ORTHANC_STABLE_AGE:-2}" \
        "$VENV/bin/python" - >"$STATE/orthanc/orthanc.json" <<'PY'
import json, os
env = os.environ
state = env["ORTHANC_STATE"]
print(json.dumps({
    "Name": "medimg",
    "StorageDirectory": f"{state}/storage",
    "IndexDirectory": f"{state}/index",
    "HttpPort": int(env["ORTHANC_HTTP_PORT"]),
    "DicomPort": int(env["ORTHANC_DICOM_PORT"]),
    "DicomAet": env["ORTHANC_AET"],
    "DicomCheckCalledAet": False,
    "DicomAlwaysAllowStore": True,
    "RemoteAccessAllowed": False,
    "AuthenticationEnabled": True,
    "RegisteredUsers": {env["ORTHANC_USER"]: env["ORTHANC_PASSWORD"]},
    "Plugins": [env["ORTHANC_PLUGIN"]],
    "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
    "StableAge": int(env["STABLE_AGE"]),
    "WebDavEnabled": False,
    "OrthancExplorerEnabled": False,
    "SaveJobs": False,
    "ExecuteLuaEnabled": False,
}, indent=1))
PY
    umask 022
}

start_orthanc() {
    local orthanc plugin
    orthanc="$(command -v Orthanc || echo /usr/sbin/Orthanc)"
    [[ -x "$orthanc" ]] || die "no Orthanc (on PATH or /usr/sbin) after scripts/system_packages.sh"
    plugin="$(dicomweb_plugin)" || die "no DICOMweb plugin (orthanc-dicomweb) found; set MEDIMG_ORTHANC_DICOMWEB_PLUGIN"
    alive "$STATE/orthanc.pid" || write_orthanc_config "$plugin"
    launch orthanc "$orthanc" "$STATE/orthanc/orthanc.json"
    AUTH_PASSWORD="$ORTHANC_PASSWORD" wait_healthy orthanc "http://$HOST:$ORTHANC_HTTP_PORT/system" "$ORTHANC_USER"
}

# The services named (all when none), with what they need: mlflow, prefect and dask (its optuna database) run on postgres.
selected() {
    local wanted=("$@") name
    ((${#wanted[@]})) || wanted=("${ALL_SERVICES[@]}")
    for name in "${wanted[@]}"; do
        case "$name" in
            postgres | mlflow | prefect | orthanc | dask) ;;
            *) die "unknown service $name (expected: ${ALL_SERVICES[*]})" ;;
        esac
    done
    for name in "${ALL_SERVICES[@]}"; do
        if [[ " ${wanted[*]} " == *" $name "* ]] \
            || { [[ "$name" == postgres ]] && [[ " ${wanted[*]} " == *" mlflow "* || " ${wanted[*]} " == *" prefect "* \
                || " ${wanted[*]} " == *" dask "* ]]; }; then
            echo "$name"
        fi
    done
}

start() {
    local services
    services=" $(selected "$@" | tr '\n' ' ')"
    if [[ "$services" == *" mlflow "* || "$services" == *" prefect "* ]]; then
        [[ -x "$VENV/bin/mlflow" && -x "$VENV/bin/prefect" ]] || die "$VENV has no mlflow/prefect: run \`make install\` first"
        "$VENV/bin/python" -c 'import psycopg2' 2>/dev/null || die "psycopg2 missing in $VENV: run \`make install\`"
    fi
    # PostgreSQL and Orthanc, with the suite's other Debian packages: installs only what is missing (messages to stderr).
    "$ROOT/scripts/system_packages.sh" >&2
    load_config check-ports
    if [[ "$services" == *" postgres "* ]]; then
        [[ -n "$(pg_bin)" ]] || die "no initdb under /usr/lib/postgresql/*/bin after scripts/system_packages.sh"
        start_postgres
    fi
    [[ "$services" == *" orthanc "* ]] && start_orthanc
    if [[ "$services" == *" mlflow "* ]]; then
        mkdir -p "$STATE/mlflow-artifacts"
        launch mlflow env MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
            "$VENV/bin/mlflow" server --backend-store-uri "$PG_URI/mlflow" \
            --artifacts-destination "$STATE/mlflow-artifacts" --host "$HOST" --port "$MLFLOW_PORT" --workers 1
    fi
    if [[ "$services" == *" prefect "* ]]; then
        mkdir -p "$STATE/prefect"
        launch prefect env PREFECT_HOME="$STATE/prefect" \
            PREFECT_SERVER_DATABASE_CONNECTION_URL="postgresql+asyncpg://$DB_USER:$DB_PASSWORD@$HOST:$PG_PORT/prefect" \
            PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=true PREFECT_SERVER_UI_ENABLED="${MEDIMG_PREFECT_UI:-false}" \
            "$VENV/bin/prefect" server start --host "$HOST" --port "$PREFECT_PORT"
    fi
    [[ "$services" == *" mlflow "* ]] && wait_healthy mlflow "http://$HOST:$MLFLOW_PORT/health"
    [[ "$services" == *" prefect "* ]] && wait_healthy prefect "http://$HOST:$PREFECT_PORT/api/health"
    [[ "$services" == *" dask "* ]] && start_dask
    return 0
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

# Stopping postgres stops mlflow and prefect first (they run on it).
stop() {
    [[ -d "$STATE" ]] || return 0
    local services
    services=" $(selected "$@" | tr '\n' ' ')"
    [[ "$services" == *" dask "* ]] && stop_dask
    [[ "$services" == *" orthanc "* ]] && stop_one orthanc
    [[ "$services" == *" prefect "* || "$services" == *" postgres "* ]] && stop_one prefect
    [[ "$services" == *" mlflow "* || "$services" == *" postgres "* ]] && stop_one mlflow
    [[ "$services" == *" postgres "* ]] || return 0
    local bin data
    bin="$(pg_bin || true)"
    if [[ -n "$bin" && -f "$STATE/pgdata.path" ]]; then
        data="$(cat "$STATE/pgdata.path")"
        if [[ -f "$data/postmaster.pid" ]] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
            as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >&2 && log "PostgreSQL stopped"
        fi
    fi
    return 0
}

print_env() {
    [[ -f "$STATE/config.env" ]] || die "not started: run \`scripts/services.sh start\`"
    load_config
    echo "export MEDIMG_TEST_MLFLOW_URI=http://$HOST:$MLFLOW_PORT"
    echo "export MEDIMG_TEST_PREFECT_API_URL=http://$HOST:$PREFECT_PORT/api"
    echo "export MEDIMG_TEST_MLFLOW_DB_URI=$PG_URI/mlflow"
    echo "export MEDIMG_ORTHANC_URL=http://$HOST:$ORTHANC_HTTP_PORT"
    echo "export MEDIMG_ORTHANC_DICOM=$ORTHANC_AET@$HOST:$ORTHANC_DICOM_PORT"
    echo "export MEDIMG_ORTHANC_USERNAME=$ORTHANC_USER"
    echo "export MEDIMG_ORTHANC_PASSWORD=$ORTHANC_PASSWORD"
    dask_env
}

status() {
    load_config
    local name
    for name in mlflow prefect; do
        if alive "$STATE/$name.pid"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; fi
    done
    if alive "$STATE/orthanc.pid"; then
        echo "orthanc: running (pid $(cat "$STATE/orthanc.pid"), http $HOST:$ORTHANC_HTTP_PORT, dicom $ORTHANC_AET@$HOST:$ORTHANC_DICOM_PORT)"
    else
        echo "orthanc: stopped"
    fi
    local bin data
    bin="$(pg_bin || true)"
    data="$(cat "$STATE/pgdata.path" 2>/dev/null || true)"
    if [[ -n "$bin" && -n "$data" ]] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        echo "postgresql: running ($HOST:$PG_PORT, $data)"
    else
        echo "postgresql: stopped"
    fi
    dask_status
}

# --------------------------------------------------------------------------- Dask
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


command="${1:-}"
shift || true
case "$command" in
    start) start "$@" ;;
    stop) stop "$@" ;;
    env) print_env ;;
    status) status ;;
    *) echo "usage: $0 start|stop [postgres|mlflow|prefect|orthanc|dask ...] | env | status" >&2; exit 2 ;;
esac
