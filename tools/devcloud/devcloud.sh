#!/usr/bin/env bash
# Local "dev cloud" for cgsnap: Keystone + Cinder (fake backend) + Glance,
# all on 127.0.0.1, SQLite, no systemd.  See tools/devcloud/README.md.
#
# usage: tools/devcloud/devcloud.sh [--shape default|production] install|start|stop|restart|status|env|verify|reset|freeze
# (or DEVCLOUD_SHAPE=production: the production shape, tools/devcloud/production.sh)
set -euo pipefail

TOOLS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$TOOLS/../.." && pwd)"
STATE="$ROOT/.devcloud"
VENVS="$STATE/venvs"
RUN="$STATE/run"
LOGD="$STATE/log"

KS_PORT=15000
CINDER_PORT=18776
GLANCE_PORT=19292
ADMIN_PASSWORD="${DEVCLOUD_ADMIN_PASSWORD:-devcloud-admin}"
export DEVCLOUD_ADMIN_PASSWORD="$ADMIN_PASSWORD"
START_TIMEOUT="${DEVCLOUD_START_TIMEOUT:-120}"
SERVICES=(keystone cinder glance)

log() { echo "[devcloud $(date +%H:%M:%S)] $*" >&2; }
die() { echo "[devcloud] ERROR: $*" >&2; exit 1; }
trap 'echo "[devcloud] ERROR: command failed (line $LINENO): $BASH_COMMAND" >&2' ERR

find_python() {
    if [[ -n "${DEVCLOUD_PYTHON:-}" ]]; then echo "$DEVCLOUD_PYTHON"; return; fi
    local c
    for c in python3.11 python3.12 python3; do
        if command -v "$c" >/dev/null 2>&1 &&
           "$c" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            # resolve pyenv shims to the real interpreter
            "$c" -c 'import sys; print(sys.executable)'; return
        fi
    done
    die "need python >= 3.10 with the venv module (set DEVCLOUD_PYTHON)"
}

svc_port() {
    case "$1" in
        keystone) echo $KS_PORT ;; cinder) echo $CINDER_PORT ;; glance) echo $GLANCE_PORT ;;
    esac
}

# HTTP probe: any 2xx/3xx answer on the version root counts as up.
probe() {
    local code
    code=$(curl -s -o /dev/null -m 3 -w '%{http_code}' "http://127.0.0.1:$(svc_port "$1")/" 2>/dev/null) || true
    [[ "$code" =~ ^[23] ]]
}

pid_of() { [[ -f "$RUN/$1.pid" ]] && cat "$RUN/$1.pid" || true; }

running() {
    local pid; pid=$(pid_of "$1")
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

render() {  # render TEMPLATE OUT (only rewrites when content changes)
    local tmp; tmp=$(mktemp)
    sed -e "s#@STATE@#$STATE#g" -e "s#@TOOLS@#$TOOLS#g" "$1" >"$tmp"
    if ! cmp -s "$tmp" "$2"; then mv "$tmp" "$2"; else rm -f "$tmp"; fi
}

# ---------------------------------------------------------------- install

install_venv() {  # svc -> creates/refreshes $VENVS/svc when pins changed
    local svc=$1 venv="$VENVS/$1" stamp want
    want=$(cat "$TOOLS/requirements-$svc.txt" "$TOOLS/constraints-$svc.txt" | sha256sum | cut -c1-16)
    stamp="$venv/.devcloud-stamp"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/python" ]]; then
        return 0
    fi
    log "installing $svc venv (pip, log: $LOGD/pip-$svc.log)"
    [[ -x "$venv/bin/python" ]] || "$PY" -m venv "$venv"
    if ! "$venv/bin/pip" install --disable-pip-version-check -q \
            -r "$TOOLS/requirements-$svc.txt" -c "$TOOLS/constraints-$svc.txt" \
            >"$LOGD/pip-$svc.log" 2>&1; then
        grep -v 'is ignored: it is neither' "$LOGD/pip-$svc.log" | tail -20 >&2
        return 1
    fi
    echo "$want" >"$stamp"
    log "$svc venv ready"
}

install() {
    mkdir -p "$VENVS" "$RUN" "$LOGD" "$STATE/keystone" "$STATE/glance/etc" \
        "$STATE/glance/images" "$STATE/glance/staging" "$STATE/glance/tasks" \
        "$STATE/glance/cache" "$STATE/glance/lock" "$STATE/cinder/lock"
    command -v curl >/dev/null || die "curl is required"
    PY=$(find_python)

    # the three pip installs are independent: run them in parallel
    local pids=() svc rc=0
    for svc in "${SERVICES[@]}"; do
        install_venv "$svc" & pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || rc=1; done
    [[ $rc == 0 ]] || die "venv installation failed (see $LOGD/pip-*.log)"

    render "$TOOLS/keystone.conf.in" "$STATE/keystone/keystone.conf"
    render "$TOOLS/cinder.conf.in" "$STATE/cinder/cinder.conf"
    render "$TOOLS/glance-api.conf.in" "$STATE/glance/etc/glance-api.conf"
    cp -f "$VENVS/cinder/etc/cinder/api-paste.ini" "$STATE/cinder/api-paste.ini"
    cp -f "$VENVS/glance/etc/glance/glance-api-paste.ini" "$STATE/glance/etc/glance-api-paste.ini"
    write_clouds_yaml

    local kconf="$STATE/keystone/keystone.conf" km="$VENVS/keystone/bin/keystone-manage"
    if [[ ! -f "$STATE/keystone/.db-ready" ]]; then
        log "keystone: db_sync, fernet/credential keys, bootstrap"
        {
            "$km" --config-file "$kconf" db_sync &&
            "$km" --config-file "$kconf" fernet_setup --keystone-user root --keystone-group root &&
            "$km" --config-file "$kconf" credential_setup --keystone-user root --keystone-group root &&
            "$km" --config-file "$kconf" bootstrap --bootstrap-password "$ADMIN_PASSWORD" \
                --bootstrap-username admin --bootstrap-project-name admin \
                --bootstrap-role-name admin --bootstrap-region-id RegionOne \
                --bootstrap-admin-url "http://127.0.0.1:$KS_PORT/v3" \
                --bootstrap-internal-url "http://127.0.0.1:$KS_PORT/v3" \
                --bootstrap-public-url "http://127.0.0.1:$KS_PORT/v3"
        } >"$LOGD/keystone-manage.log" 2>&1 || { tail -20 "$LOGD/keystone-manage.log" >&2; die "keystone setup failed"; }
        touch "$STATE/keystone/.db-ready"
    fi
    if [[ ! -f "$STATE/glance/.db-ready" ]]; then
        log "glance: db_sync"
        OS_GLANCE_CONFIG_DIR="$STATE/glance/etc" "$VENVS/glance/bin/glance-manage" \
            --config-file "$STATE/glance/etc/glance-api.conf" db_sync \
            >"$LOGD/glance-manage.log" 2>&1 || { tail -20 "$LOGD/glance-manage.log" >&2; die "glance db_sync failed"; }
        touch "$STATE/glance/.db-ready"
    fi
    if [[ ! -f "$STATE/cinder/.db-ready" ]]; then
        log "cinder: db sync"
        "$VENVS/cinder/bin/cinder-manage" --config-file "$STATE/cinder/cinder.conf" \
            --log-file "$LOGD/cinder-manage.log" db sync \
            >>"$LOGD/cinder-manage.log" 2>&1 || { tail -20 "$LOGD/cinder-manage.log" >&2; die "cinder db sync failed"; }
        touch "$STATE/cinder/.db-ready"
    fi
}

write_clouds_yaml() {
    local tmp; tmp=$(mktemp)
    cat >"$tmp" <<EOF
# generated by tools/devcloud/devcloud.sh
clouds:
  devcloud:
    auth:
      auth_url: http://127.0.0.1:$KS_PORT/v3
      username: cgsnap
      password: cgsnap-dev
      project_name: cgsnap
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
    volume_api_version: 3
    image_api_version: 2
  devcloud-admin:
    auth:
      auth_url: http://127.0.0.1:$KS_PORT/v3
      username: admin
      password: $ADMIN_PASSWORD
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    interface: public
    identity_api_version: 3
    volume_api_version: 3
    image_api_version: 2
EOF
    if ! cmp -s "$tmp" "$STATE/clouds.yaml"; then mv "$tmp" "$STATE/clouds.yaml"; else rm -f "$tmp"; fi
}

# ---------------------------------------------------------------- start/stop

launch() {  # svc cmd... : start detached, stdout/stderr -> log, pid -> run/
    local svc=$1; shift
    if running "$svc"; then return 0; fi
    if probe "$svc"; then
        die "port $(svc_port "$svc") answers but $svc is not ours (no live pid in $RUN/$svc.pid); stop it first"
    fi
    log "starting $svc on 127.0.0.1:$(svc_port "$svc")"
    echo "=== $(date -Is) start" >>"$LOGD/$svc.log"
    setsid nohup "$@" >>"$LOGD/$svc.log" 2>&1 </dev/null &
    echo $! >"$RUN/$svc.pid"
}

wait_up() {  # svc
    local svc=$1 i
    for ((i = 0; i < START_TIMEOUT * 5; i++)); do
        if probe "$svc"; then log "$svc is up"; return 0; fi
        if ! running "$svc"; then break; fi
        sleep 0.2
    done
    echo "----- tail of $LOGD/$svc.log -----" >&2
    tail -n 40 "$LOGD/$svc.log" >&2 || true
    echo "-----" >&2
    if running "$svc"; then die "$svc did not answer on port $(svc_port "$svc") within ${START_TIMEOUT}s"; fi
    rm -f "$RUN/$svc.pid"
    die "$svc exited during start-up (log above: $LOGD/$svc.log)"
}

start_keystone() {
    launch keystone "$VENVS/keystone/bin/uwsgi" \
        --http11-socket "127.0.0.1:$KS_PORT" \
        --module keystone.wsgi.api:application \
        --virtualenv "$VENVS/keystone" \
        --env "OS_KEYSTONE_CONFIG_FILES=$STATE/keystone/keystone.conf" \
        --master --die-on-term --processes 1 --threads 4 --enable-threads \
        --need-app --buffer-size 65535 --disable-logging --log-4xx --log-5xx
}

start_glance() {
    launch glance env "OS_GLANCE_CONFIG_DIR=$STATE/glance/etc" \
        "$VENVS/glance/bin/gunicorn" --bind "127.0.0.1:$GLANCE_PORT" \
        --workers 1 --threads 8 --worker-class gthread --timeout 600 \
        --keep-alive 75 --graceful-timeout 5 --chdir "$STATE/glance" \
        'glance.common.wsgi_app:init_app()'
}

start_cinder() {
    launch cinder "$VENVS/cinder/bin/python" "$TOOLS/cinder_allinone.py" \
        --config-file "$STATE/cinder/cinder.conf"
}

admin_token() {  # prints an admin project-scoped token (curl only, no python start-up)
    curl -s -m 10 -D - -o /dev/null -H 'Content-Type: application/json' \
        -d '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"admin","domain":{"id":"default"},"password":"'"$ADMIN_PASSWORD"'"}}},"scope":{"project":{"name":"admin","domain":{"id":"default"}}}}}' \
        "http://127.0.0.1:$KS_PORT/v3/auth/tokens" | tr -d '\r' | awk 'tolower($1)=="x-subject-token:"{print $2}'
}

wait_cinder_backend() {  # the API answers before the scheduler knows the fake pool
    local tok i
    tok=$(admin_token || true); [[ -n "$tok" ]] || die "cannot get an admin token from keystone"
    for ((i = 0; i < START_TIMEOUT * 5; i++)); do
        if curl -s -m 5 -H "X-Auth-Token: $tok" \
            "http://127.0.0.1:$CINDER_PORT/v3/scheduler-stats/get_pools" 2>/dev/null | grep -q '#fake'; then
            return 0
        fi
        sleep 0.2
    done
    tail -n 40 "$LOGD/cinder.log" >&2
    die "cinder scheduler never saw the fake backend (pool devcloud@fake#fake)"
}

cinder_setup() {  # the (idempotent) setup runs again whenever cinder_setup.py changed
    local setup_sum
    setup_sum=$(sha256sum "$TOOLS/cinder_setup.py" | cut -d' ' -f1)
    if [[ "$(cat "$STATE/cinder/.setup-done" 2>/dev/null)" != "$setup_sum" ]]; then
        log "cinder: volume type, group types"
        "$VENVS/cinder/bin/python" "$TOOLS/cinder_setup.py" || die "cinder_setup.py failed"
        echo "$setup_sum" > "$STATE/cinder/.setup-done"
    fi
}

start() {
    if probe keystone && probe cinder && probe glance &&
       running keystone && running cinder && running glance &&
       [[ -f "$STATE/.setup-done" ]]; then
        cinder_setup
        log "already running"
        return 0
    fi
    local t0=$SECONDS
    install
    # cinder/glance only talk to keystone on their first authenticated
    # request, so all three can boot in parallel.
    start_keystone
    start_glance
    start_cinder
    wait_up keystone
    if [[ ! -f "$STATE/keystone/.setup-done" ]]; then
        log "keystone: projects, users, roles, catalog"
        "$VENVS/keystone/bin/python" "$TOOLS/keystone_setup.py" || die "keystone_setup.py failed"
        touch "$STATE/keystone/.setup-done"
    fi
    wait_up glance
    wait_up cinder
    cinder_setup
    wait_cinder_backend
    touch "$STATE/.setup-done"
    log "dev cloud up in $((SECONDS - t0))s; use: eval \"\$($0 env)\"; OS_CLOUD=devcloud"
}

stop() {  # TERM all three at once, then wait; KILL the process group after 15s
    local svc pid i alive
    declare -A pids=()
    for svc in glance cinder keystone; do
        pid=$(pid_of "$svc")
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            log "stopping $svc (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            pids[$svc]=$pid
        else
            rm -f "$RUN/$svc.pid"
        fi
    done
    for ((i = 0; i < 75; i++)); do
        alive=0
        for svc in "${!pids[@]}"; do kill -0 "${pids[$svc]}" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.2
    done
    for svc in "${!pids[@]}"; do
        pid=${pids[$svc]}
        if kill -0 "$pid" 2>/dev/null; then
            log "$svc did not exit on TERM; killing its process group"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$RUN/$svc.pid"
    done
}

status() {
    local svc rc=0 state
    for svc in "${SERVICES[@]}"; do
        if probe "$svc"; then state=up; else state=down; rc=1; fi
        printf '%-9s %-5s http://127.0.0.1:%s  pid=%s\n' "$svc" "$state" "$(svc_port "$svc")" \
            "$(running "$svc" && pid_of "$svc" || echo -)"
    done
    return $rc
}

verify() {  # smoke test with real clients, as user cgsnap (client venv)
    mkdir -p "$LOGD"; PY=$(find_python)
    install_venv client || die "client venv installation failed"
    probe keystone && probe cinder && probe glance || die "dev cloud is not running (devcloud.sh start)"
    OS_CLIENT_CONFIG_FILE="$STATE/clouds.yaml" "$VENVS/client/bin/python" "$TOOLS/verify.py"
}

reset() {  # stop and wipe all state (DBs, keys, images, logs) but keep the venvs
    stop
    local d
    for d in keystone cinder glance run log clouds.yaml .setup-done; do rm -rf "${STATE:?}/$d"; done
    log "state wiped (venvs kept); run: $0 start"
}

env_cmd() {
    echo "export OS_CLIENT_CONFIG_FILE=$STATE/clouds.yaml"
    echo "export OS_CLOUD=\${OS_CLOUD:-devcloud}"
}

freeze() {
    local svc
    for svc in "${SERVICES[@]}" client; do
        [[ -x "$VENVS/$svc/bin/pip" ]] || continue
        { echo "# pip freeze of a working .devcloud/venvs/$svc (constraints; regenerate with: devcloud.sh freeze)"
          "$VENVS/$svc/bin/pip" freeze 2>/dev/null | grep -v -e '^-e' -e '@ file'; } >"$TOOLS/constraints-$svc.txt"
    done
}

# Sourced by production.sh (the production shape) for its helpers: run only
# when executed.  DEVCLOUD_SHAPE=production (or `--shape production` first)
# hands over to production.sh; the default shape is what runs below.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0
SHAPE="${DEVCLOUD_SHAPE:-default}"
if [[ "${1:-}" == --shape ]]; then SHAPE="${2:-}"; shift 2 || true; fi
case "$SHAPE" in
    default|"") ;;
    production) exec "$TOOLS/production.sh" "$@" ;;
    *) die "unknown DEVCLOUD_SHAPE '$SHAPE' (default|production)" ;;
esac

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    status) status ;;
    env) env_cmd ;;
    verify) verify ;;
    reset) reset ;;
    freeze) freeze ;;
    *) echo "usage: $0 install|start|stop|restart|status|env|verify|reset|freeze" >&2; exit 2 ;;
esac
