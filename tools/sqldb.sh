#!/usr/bin/env bash
# A real SQL database for cgsnap's catalog and TaskFlow logbooks in tests.
#
#   tools/sqldb.sh url postgresql|mariadb [DB]   start the server if it is down
#                                           (installing it from Debian's packages if
#                                           missing), recreate the database DB
#                                           (default cgsnap_functional), print its
#                                           SQLAlchemy URL
#   tools/sqldb.sh drop postgresql|mariadb DB   drop the database DB
#
# PostgreSQL: 127.0.0.1:5432, trust auth for local users (Debian's default here);
# MariaDB: 127.0.0.1:3306, root with an empty password.
set -euo pipefail

DB=${3:-cgsnap_functional}
[[ "$DB" =~ ^[a-z0-9_]+$ ]] || { echo "[sqldb] ERROR: bad database name $DB" >&2; exit 1; }
DROP_ONLY=0
log() { echo "[sqldb] $*" >&2; }
die() { echo "[sqldb] ERROR: $*" >&2; exit 1; }

apt_install() {
    log "apt-get install $*"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "$@" >/dev/null
}

wait_for() {  # wait_for <what> <command...>: up to 30 s
    local what=$1; shift
    for _ in $(seq 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
    die "$what did not come up"
}

postgresql() {
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    if ! pg_isready -q -h 127.0.0.1; then
        log "starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
        wait_for PostgreSQL pg_isready -q -h 127.0.0.1
    fi
    local psql=(psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -q)
    "${psql[@]}" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
        || die "cannot drop database $DB in PostgreSQL"
    ((DROP_ONLY)) && return
    "${psql[@]}" -c "CREATE DATABASE $DB" || die "cannot create database $DB in PostgreSQL"
    echo "postgresql+psycopg2://postgres@127.0.0.1:5432/$DB"
}

mariadb_() {
    command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server
    local sql=(mariadb -uroot -h127.0.0.1 --protocol=tcp)
    if ! "${sql[@]}" -e "SELECT 1" >/dev/null 2>&1; then
        log "starting MariaDB"
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
        wait_for MariaDB "${sql[@]}" -e "SELECT 1"
    fi
    "${sql[@]}" -e "DROP DATABASE IF EXISTS $DB" || die "cannot drop database $DB in MariaDB"
    ((DROP_ONLY)) && return
    "${sql[@]}" -e "CREATE DATABASE $DB CHARACTER SET utf8mb4" \
        || die "cannot create database $DB in MariaDB"
    echo "mysql+pymysql://root@127.0.0.1:3306/$DB?charset=utf8mb4"
}

case "${1:-}:${2:-}" in
    url:postgresql) postgresql ;;
    url:mariadb) mariadb_ ;;
    drop:postgresql) DROP_ONLY=1; postgresql ;;
    drop:mariadb) DROP_ONLY=1; mariadb_ ;;
    *) die "usage: $0 url|drop postgresql|mariadb [DB]" ;;
esac
