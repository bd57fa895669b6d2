#!/usr/bin/env bash
# The PRODUCTION shape of the dev cloud (see tools/devcloud/README.md):
#   Keystone (its own, port 25000) with user cgsnap = member role only;
#   cinder-api (28776), cinder-scheduler and cinder-volume as three processes
#   over RabbitMQ (vhost/user devcloud-prod), on MariaDB (database
#   devcloud_prod_cinder, tables made by `cinder-manage db sync`: utf8mb3);
#   Glance (29292) on MariaDB too; per-volume-type quotas in force; region
#   RegionNoImage whose catalog has no image service.
# It runs beside the default shape: own ports, own state in .devcloud-production/,
# own clouds.yaml (.devcloud-production/clouds.yaml), and the default shape's venvs
# (.devcloud/venvs, or DEVCLOUD_VENVS) plus PyMySQL in .devcloud-production/pylib.
#
# usage: DEVCLOUD_SHAPE=production tools/devcloud/devcloud.sh install|start|stop|restart|status|env|reset
set -euo pipefail

# shellcheck source=devcloud.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/devcloud.sh"

STATE="$ROOT/.devcloud-production"
VENVS="${DEVCLOUD_VENVS:-$ROOT/.devcloud/venvs}"
RUN="$STATE/run"
LOGD="$STATE/log"
PYLIB="$STATE/pylib"
KS_PORT=${DEVCLOUD_PROD_KS_PORT:-25000}
CINDER_PORT=${DEVCLOUD_PROD_CINDER_PORT:-28776}
GLANCE_PORT=${DEVCLOUD_PROD_GLANCE_PORT:-29292}
export DEVCLOUD_PROD_KS_PORT=$KS_PORT DEVCLOUD_PROD_CINDER_PORT=$CINDER_PORT \
    DEVCLOUD_PROD_GLANCE_PORT=$GLANCE_PORT
API_WORKERS=${DEVCLOUD_PROD_API_WORKERS:-1}
PYMYSQL_PIN="PyMySQL==1.2.4"
RABBIT_VHOST=devcloud-prod RABBIT_USER=devcloud-prod RABBIT_PASS=devcloud-prod
RABBIT_URL="rabbit://$RABBIT_USER:$RABBIT_PASS@127.0.0.1:5672/$RABBIT_VHOST"
DB_USER=devcloud_prod DB_PASS=devcloud-prod
CINDER_DB=devcloud_prod_cinder GLANCE_DB=devcloud_prod_glance
db_url() { echo "mysql+pymysql://$DB_USER:$DB_PASS@127.0.0.1:3306/$1?charset=utf8"; }
SERVICES=(keystone glance cinder-api cinder-scheduler cinder-volume)
SQL=(mariadb -uroot -h127.0.0.1 --protocol=tcp)

svc_port() {
    case "$1" in
        keystone) echo "$KS_PORT" ;; cinder|cinder-api) echo "$CINDER_PORT" ;; glance) echo "$GLANCE_PORT" ;;
    esac
}

render_prod() {  # TEMPLATE OUT [sed args...]: render() with the production substitutions
    local in=$1 out=$2 tmp; shift 2; tmp=$(mktemp)
    sed -e "s#@STATE@#$STATE#g" -e "s#@TOOLS@#$TOOLS#g" -e "s#@KS_PORT@#$KS_PORT#g" \
        -e "s#@CINDER_PORT@#$CINDER_PORT#g" -e "s#@GLANCE_PORT@#$GLANCE_PORT#g" \
        -e "s#@API_WORKERS@#$API_WORKERS#g" -e "s#@RABBIT_URL@#$RABBIT_URL#g" \
        -e "s#@DB_URL@#$(db_url $CINDER_DB)#g" "$@" "$in" >"$tmp"
    if ! cmp -s "$tmp" "$out"; then mv "$tmp" "$out"; else rm -f "$tmp"; fi
}

# ---------------------------------------------------------------- backing services

ensure_mariadb() {
    if ! "${SQL[@]}" -e "SELECT 1" >/dev/null 2>&1; then
        [[ -x /usr/sbin/mariadbd ]] || die "MariaDB is not installed (apt-get install mariadb-server)"
        log "starting MariaDB"
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
        local i; for ((i = 0; i < 60; i++)); do "${SQL[@]}" -e "SELECT 1" >/dev/null 2>&1 && break; sleep 0.5; done
    fi
    # utf8 = utf8mb3: what an OpenStack deployment creates its databases with
    "${SQL[@]}" -e "
        CREATE DATABASE IF NOT EXISTS $CINDER_DB CHARACTER SET utf8;
        CREATE DATABASE IF NOT EXISTS $GLANCE_DB CHARACTER SET utf8;
        CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
        CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
        GRANT ALL ON $CINDER_DB.* TO '$DB_USER'@'localhost', '$DB_USER'@'127.0.0.1';
        GRANT ALL ON $GLANCE_DB.* TO '$DB_USER'@'localhost', '$DB_USER'@'127.0.0.1';" \
        || die "cannot create the MariaDB databases/user of the production shape"
}

db_has_table() {  # DB TABLE
    [[ -n "$("${SQL[@]}" -N -e "SHOW TABLES FROM $1 LIKE '$2'" 2>/dev/null)" ]]
}

ensure_rabbitmq() {
    command -v rabbitmqctl >/dev/null || die "RabbitMQ is not installed (apt-get install rabbitmq-server)"
    if ! rabbitmqctl -q status >/dev/null 2>&1; then
        log "starting RabbitMQ"
        rabbitmq-server -detached
        rabbitmqctl -q await_startup --timeout 60 >/dev/null || die "RabbitMQ did not start"
    fi
    rabbitmqctl -q list_vhosts | grep -x "$RABBIT_VHOST" >/dev/null || rabbitmqctl -q add_vhost "$RABBIT_VHOST"
    if ! rabbitmqctl -q list_users | awk '{print $1}' | grep -x "$RABBIT_USER" >/dev/null; then
        rabbitmqctl -q add_user "$RABBIT_USER" "$RABBIT_PASS" >/dev/null
    fi
    # always: a vhost deleted and made again has lost its permissions
    rabbitmqctl -q set_permissions -p "$RABBIT_VHOST" "$RABBIT_USER" '.*' '.*' '.*'
}

# ---------------------------------------------------------------- install

install() {
    mkdir -p "$RUN" "$LOGD" "$STATE/keystone" "$STATE/glance/etc" "$STATE/glance/images" \
        "$STATE/glance/staging" "$STATE/glance/tasks" "$STATE/glance/cache" \
        "$STATE/glance/lock" "$STATE/cinder/lock"
    command -v curl >/dev/null || die "curl is required"
    local svc
    for svc in keystone cinder glance; do
        if [[ ! -x "$VENVS/$svc/bin/python" ]]; then
            log "the default shape's venvs are missing: installing them"
            DEVCLOUD_SHAPE=default "$TOOLS/devcloud.sh" install
            break
        fi
    done
    if [[ "$(cat "$PYLIB/.stamp" 2>/dev/null)" != "$PYMYSQL_PIN" ]]; then
        log "PyMySQL into $PYLIB (the venvs are shared with the default shape, so untouched)"
        "$VENVS/cinder/bin/pip" install --disable-pip-version-check -q --target "$PYLIB" \
            --upgrade "$PYMYSQL_PIN" >"$LOGD/pip-pylib.log" 2>&1 \
            || { tail -20 "$LOGD/pip-pylib.log" >&2; die "PyMySQL install failed"; }
        echo "$PYMYSQL_PIN" >"$PYLIB/.stamp"
    fi
    export PYTHONPATH="$PYLIB${PYTHONPATH:+:$PYTHONPATH}"
    ensure_mariadb &
    local mpid=$!
    ensure_rabbitmq
    wait $mpid || die "MariaDB setup failed"

    render_prod "$TOOLS/keystone.conf.in" "$STATE/keystone/keystone.conf"
    render_prod "$TOOLS/glance-api.conf.in" "$STATE/glance/etc/glance-api.conf" \
        -e "s#19292#$GLANCE_PORT#g" -e "s#127.0.0.1:15000#127.0.0.1:$KS_PORT#g" \
        -e "s#^connection = .*#connection = $(db_url $GLANCE_DB)#"
    render_prod "$TOOLS/cinder-production.conf.in" "$STATE/cinder/cinder.conf"
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
    # the two db syncs are independent: run them in parallel
    local gpid=""
    if ! db_has_table "$GLANCE_DB" images; then
        log "glance: db_sync (MariaDB)"
        OS_GLANCE_CONFIG_DIR="$STATE/glance/etc" "$VENVS/glance/bin/glance-manage" \
            --config-file "$STATE/glance/etc/glance-api.conf" db_sync \
            >"$LOGD/glance-manage.log" 2>&1 &
        gpid=$!
    fi
    if ! db_has_table "$CINDER_DB" volumes; then
        log "cinder: cinder-manage db sync (MariaDB)"
        "$VENVS/cinder/bin/cinder-manage" --config-file "$STATE/cinder/cinder.conf" \
            --log-file "$LOGD/cinder-manage.log" db sync >>"$LOGD/cinder-manage.log" 2>&1 \
            || { tail -20 "$LOGD/cinder-manage.log" >&2; die "cinder db sync failed"; }
    fi
    if [[ -n "$gpid" ]]; then
        wait "$gpid" || { tail -20 "$LOGD/glance-manage.log" >&2; die "glance db_sync failed"; }
    fi
}

write_clouds_yaml() {
    local tmp; tmp=$(mktemp)
    {
        echo "# generated by tools/devcloud/production.sh (the production shape)"
        echo "clouds:"
        cloud_entry devcloud-prod cgsnap cgsnap-dev cgsnap RegionOne
        cloud_entry devcloud-prod-admin admin "$ADMIN_PASSWORD" admin RegionOne
        cloud_entry devcloud-prod-noimage cgsnap cgsnap-dev cgsnap RegionNoImage
    } >"$tmp"
    if ! cmp -s "$tmp" "$STATE/clouds.yaml"; then mv "$tmp" "$STATE/clouds.yaml"; else rm -f "$tmp"; fi
}

cloud_entry() {  # name user password project region
    cat <<EOF
  $1:
    auth:
      auth_url: http://127.0.0.1:$KS_PORT/v3
      username: $2
      password: $3
      project_name: $4
      user_domain_name: Default
      project_domain_name: Default
    region_name: $5
    interface: public
    identity_api_version: 3
    volume_api_version: 3
    image_api_version: 2
EOF
}

# ---------------------------------------------------------------- start/stop

prod_cinder_setup() {  # (idempotent) runs again whenever its scripts changed
    local setup_sum
    setup_sum=$(cat "$TOOLS/production_setup.py" "$TOOLS/cinder_setup.py" | sha256sum | cut -d' ' -f1)
    if [[ "$(cat "$STATE/cinder/.setup-done" 2>/dev/null)" != "$setup_sum" ]]; then
        log "cinder: volume type, group types, per-type quotas"
        "$VENVS/cinder/bin/python" "$TOOLS/production_setup.py" cinder || die "production_setup.py cinder failed"
        echo "$setup_sum" >"$STATE/cinder/.setup-done"
    fi
}

start() {
    if status >/dev/null 2>&1 && [[ -f "$STATE/.setup-done" ]]; then
        prod_cinder_setup
        log "production shape already running"
        return 0
    fi
    local t0=$SECONDS
    install
    export PYTHONPATH="$PYLIB${PYTHONPATH:+:$PYTHONPATH}"
    local conf="$STATE/cinder/cinder.conf"
    start_keystone
    launch glance env "OS_GLANCE_CONFIG_DIR=$STATE/glance/etc" \
        "$VENVS/glance/bin/gunicorn" --bind "127.0.0.1:$GLANCE_PORT" \
        --workers 1 --threads 8 --worker-class gthread --timeout 600 \
        --keep-alive 75 --graceful-timeout 5 --chdir "$STATE/glance" \
        'glance.common.wsgi_app:init_app()'
    launch cinder-scheduler "$VENVS/cinder/bin/cinder-scheduler" --config-file "$conf"
    launch cinder-volume "$VENVS/cinder/bin/cinder-volume" --config-file "$conf"
    launch cinder-api "$VENVS/cinder/bin/cinder-api" --config-file "$conf"
    wait_up keystone
    if [[ ! -f "$STATE/keystone/.setup-done" ]]; then
        log "keystone: projects, users (cgsnap = member only), catalog, region RegionNoImage"
        "$VENVS/cinder/bin/python" "$TOOLS/production_setup.py" keystone || die "production_setup.py keystone failed"
        touch "$STATE/keystone/.setup-done"
    fi
    wait_up glance
    wait_up cinder-api
    local svc
    for svc in cinder-scheduler cinder-volume; do
        running "$svc" || { tail -n 40 "$LOGD/$svc.log" >&2; die "$svc exited during start-up"; }
    done
    wait_cinder_backend
    prod_cinder_setup
    touch "$STATE/.setup-done"
    log "production shape up in $((SECONDS - t0))s; clouds devcloud-prod, devcloud-prod-admin," \
        "devcloud-prod-noimage in $STATE/clouds.yaml"
}

stop() {  # TERM every service, then KILL the process group of any left after 15 s
    local svc pid i alive
    declare -A pids=()
    for svc in "${SERVICES[@]}"; do
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
        # cinder-api/-volume fork workers: the whole process group goes
        kill -KILL -- "-$pid" 2>/dev/null || true
        rm -f "$RUN/$svc.pid"
    done
}

status() {
    local svc rc=0 state port
    for svc in "${SERVICES[@]}"; do
        port=$(svc_port "$svc")
        if [[ -n "$port" ]]; then
            if probe "$svc" && running "$svc"; then state=up; else state=down; rc=1; fi
        elif running "$svc"; then state=up; else state=down; rc=1; fi
        printf '%-16s %-5s %-24s pid=%s\n' "$svc" "$state" "${port:+http://127.0.0.1:$port}" \
            "$(running "$svc" && pid_of "$svc" || echo -)"
    done
    return $rc
}

reset() {  # stop and wipe the shape's state, databases and vhost (venvs and pylib kept)
    stop
    "${SQL[@]}" -e "DROP DATABASE IF EXISTS $CINDER_DB; DROP DATABASE IF EXISTS $GLANCE_DB" || true
    rabbitmqctl -q delete_vhost "$RABBIT_VHOST" >/dev/null 2>&1 || true
    local d
    for d in keystone cinder glance run log clouds.yaml .setup-done; do rm -rf "${STATE:?}/$d"; done
    log "production shape wiped; run: DEVCLOUD_SHAPE=production $TOOLS/devcloud.sh start"
}

env_cmd() {
    echo "export OS_CLIENT_CONFIG_FILE=$STATE/clouds.yaml"
    echo "export OS_CLOUD=\${OS_CLOUD:-devcloud-prod}"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    status) status || exit 1 ;;  # (no ERR-trap message for "down")
    env) env_cmd ;;
    reset) reset ;;
    *) echo "usage: DEVCLOUD_SHAPE=production $0 install|start|stop|restart|status|env|reset" >&2; exit 2 ;;
esac
