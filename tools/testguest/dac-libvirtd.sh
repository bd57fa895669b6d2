#!/usr/bin/env bash
# A second, private libvirtd whose QEMU driver relabels images (DAC driver,
# dynamic_ownership = 1), as stock Debian does, next to the shared test
# libvirtd (which runs with dynamic_ownership = 0 and is never touched here).
#
#   tools/testguest/dac-libvirtd.sh start   # prints its URI
#   tools/testguest/dac-libvirtd.sh stop    # destroys its domains, stops it
#   tools/testguest/dac-libvirtd.sh uri
#
# Guests: TESTGUEST_URI=$(dac-libvirtd.sh uri) testguest.sh boot NAME --qemu-user +64055:+64055
# runs NAME's QEMU as libvirt-qemu (uid 64055) under this daemon.
#
# Its own mount namespace gets a private tmpfs on /run/libvirt and its own
# /etc/libvirt and /var/{lib,cache,log}/libvirt under $TESTGUEST_DAC_DIR
# (default: $TESTGUEST_DIR-dac); its socket is $TESTGUEST_DAC_DIR/sock/libvirt-sock
# and its pid file $TESTGUEST_DAC_DIR/run/libvirtd.pid.  It shares the
# harness's /etc/passwd and /etc/group (with libvirt-qemu), so build first.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TG=${TESTGUEST_DIR:-$REPO/.testguest}
D=${TESTGUEST_DAC_DIR:-$TG-dac}
SOCK=$D/sock/libvirt-sock
URI="qemu:///system?socket=$SOCK"
PIDFILE=$D/run/libvirtd.pid

log() { echo "dac-libvirtd: $*" >&2; }
die() { log "$*"; exit 1; }
our_pid() { local p; p=$(cat "$PIDFILE" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null && echo "$p"; }

start() {
    local p i
    if p=$(our_pid); then log "already running (pid $p)"; echo "$URI"; return 0; fi
    [ -e "$TG/etc/passwd" ] || die "$TG/etc/passwd missing: run testguest.sh build and libvirtd-start first"
    mkdir -p "$D"/{etc-libvirt/qemu,var/lib/libvirt,var/cache/libvirt,var/log/libvirt,log,run,sock}
    cp "$HERE/libvirtd.conf" "$D/etc-libvirt/"
    echo "unix_sock_dir = \"$D/sock\"" >>"$D/etc-libvirt/libvirtd.conf"
    cp "$HERE/qemu-dac.conf" "$D/etc-libvirt/qemu.conf"
    setsid unshare -m --propagation private -- /bin/sh -c '
        set -e
        mount -t tmpfs tmpfs /run/libvirt
        mount --bind "$1/etc-libvirt" /etc/libvirt
        mount --bind "$2/etc/passwd" /etc/passwd
        mount --bind "$2/etc/group" /etc/group
        for d in lib cache log; do mount --bind "$1/var/$d/libvirt" /var/$d/libvirt; done
        exec /usr/sbin/libvirtd -p "$1/run/libvirtd.pid"
    ' sh "$D" "$TG" </dev/null >>"$D/log/libvirtd.log" 2>&1 &
    for i in $(seq 200); do
        if [ -S "$SOCK" ] && virsh -q -c "$URI" uri >/dev/null 2>&1; then
            log "up (pid $(cat "$PIDFILE"), $URI)"; echo "$URI"; return 0
        fi
        sleep 0.05
    done
    tail -20 "$D/log/libvirtd.log" >&2
    die "libvirtd did not come up"
}

stop() {
    local p n i
    p=$(our_pid) || { log "not running"; return 0; }
    for n in $(virsh -c "$URI" list --all --name); do
        virsh -c "$URI" destroy "$n" >/dev/null 2>&1 || true
        virsh -c "$URI" undefine "$n" >/dev/null 2>&1 || true
    done
    kill -TERM "$p"
    for i in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p"
    rm -f "$PIDFILE"
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    uri) echo "$URI" ;;
    *) die "usage: $0 start|stop|uri" ;;
esac
