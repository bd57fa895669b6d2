#!/usr/bin/env bash
# Real-guest test harness for cgsnap: tiny Debian-cloud-kernel + busybox guest
# with qemu-ga and a seq-writing workload, run by a private, systemd-less
# libvirtd on qemu:///system (TCG).  See README.md in this directory.
set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
TG=${TESTGUEST_DIR:-$REPO/.testguest}
URI=${TESTGUEST_URI:-qemu:///system}  # TESTGUEST_URI: e.g. dac-libvirtd.sh uri
SOCK=/run/libvirt/libvirt-sock
SYS_PIDFILE=/run/libvirtd.pid
export LIBVIRT_DEFAULT_URI=$URI

PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86
      qemu-utils qemu-guest-agent busybox-static e2fsprogs)
VENV_PKGS=(libvirt-dev pkg-config gcc python3-dev python3-venv)
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
         virtio_blk virtio_console)
DISKS=(vda vdb vdc vdd)
declare -A LABEL=([vda]=root [vdb]=d1 [vdc]=d2 [vdd]=d3)
ROOT_SIZE=${TESTGUEST_ROOT_SIZE:-64M}
DATA_SIZE=${TESTGUEST_DATA_SIZE:-32M}
DISK_FORMAT=${TESTGUEST_DISK_FORMAT:-qcow2}

log() { echo "testguest: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
virsh() { command virsh -q -c "$URI" "$@"; }

# ---------------------------------------------------------------- packages ---
apt_install() { # pkgs... (only the missing ones are installed)
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    local apt=(apt-get -o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >/dev/null || {
        apt-get -o DPkg::Lock::Timeout=600 -q update >/dev/null
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >/dev/null
    }
}

# ------------------------------------------------------------------ kernel ---
kernel_pkg() {
    if [ -n "${TESTGUEST_KERNEL_PKG:-}" ]; then echo "$TESTGUEST_KERNEL_PKG"; return; fi
    local p
    p=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    if [ -z "$p" ]; then
        apt-get -o DPkg::Lock::Timeout=600 -q update >/dev/null
        p=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    fi
    echo "$p"
}

build_kernel() {
    local pkg kver kd dl
    pkg=$(kernel_pkg)
    if [ -z "$pkg" ]; then
        [ -e "$TG/kernel/current/vmlinuz" ] && { log "apt has no cloud kernel; keeping current"; return; }
        die "cannot resolve linux-image-cloud-amd64 (apt-get update?)"
    fi
    kver=${pkg#linux-image-}
    kd=$TG/kernel/$kver
    if [ ! -e "$kd/vmlinuz" ]; then
        dl=$TG/dl; rm -rf "$dl"; mkdir -p "$dl"
        log "downloading $pkg"
        (cd "$dl" && apt-get download -q "$pkg" >/dev/null 2>&1) ||
            { apt-get -o DPkg::Lock::Timeout=600 -q update >/dev/null; (cd "$dl" && apt-get download -q "$pkg" >/dev/null 2>&1); }
        rm -rf "$kd.tmp"; mkdir -p "$kd.tmp/x" "$kd.tmp/modules"
        # extract only vmlinuz + modules.builtin + the .ko we need
        dpkg-deb --fsys-tarfile "$dl"/*.deb | tar -x -C "$kd.tmp/x" --wildcards \
            "./boot/vmlinuz-$kver" "./lib/modules/$kver/modules.builtin" \
            "./lib/modules/$kver/kernel/drivers/virtio/*" \
            "./lib/modules/$kver/kernel/drivers/block/virtio_blk.ko*" \
            "./lib/modules/$kver/kernel/drivers/char/virtio_console.ko*"
        cp "$kd.tmp/x/boot/vmlinuz-$kver" "$kd.tmp/vmlinuz"
        local m f
        for m in "${MODULES[@]}"; do
            if grep -q "/$m.ko" "$kd.tmp/x/lib/modules/$kver/modules.builtin"; then continue; fi
            f=$(find "$kd.tmp/x/lib/modules/$kver" -name "$m.ko*" | head -1)
            [ -n "$f" ] || die "module $m neither builtin nor shipped in $pkg"
            case "$f" in
                *.ko) cp "$f" "$kd.tmp/modules/" ;;
                *.ko.xz) xz -dc "$f" >"$kd.tmp/modules/$m.ko" ;;
                *.ko.zst) zstd -qdc "$f" >"$kd.tmp/modules/$m.ko" ;;
                *) die "unknown module compression: $f" ;;
            esac
        done
        rm -rf "$kd.tmp/x" "$dl" "$kd"; mv "$kd.tmp" "$kd"
    fi
    ln -sfn "$kver" "$TG/kernel/current"
}

# --------------------------------------------------------------- initramfs ---
build_initrd() {
    local out=$TG/initrd.img st=$TG/initramfs.tmp lib kd
    kd=$(readlink -f "$TG/kernel/current")
    if [ -e "$out" ] && [ "$(cat "$TG/initrd.stamp" 2>/dev/null)" = "$kd" ] &&
       [ -z "$(find "$HERE/init" /bin/busybox /usr/sbin/qemu-ga -newer "$out")" ]; then
        return 0
    fi
    local t0; t0=$(now)
    rm -rf "$st"; mkdir -p "$st"/{bin,sbin,usr/bin,usr/sbin,lib/modules,lib64,proc,sys,dev,tmp,run,mnt}
    cp /bin/busybox "$st/bin/busybox"
    cp "$HERE/init" "$st/init"; chmod 755 "$st/init"
    cp /usr/sbin/qemu-ga "$st/usr/sbin/qemu-ga"
    for lib in $(ldd /usr/sbin/qemu-ga | awk '/=> \//{print $3} /^\s*\/lib/{print $1}'); do
        mkdir -p "$st$(dirname "$lib")"; cp -L "$lib" "$st$lib"
    done
    cp "$kd"/modules/*.ko "$st/lib/modules/" 2>/dev/null || true
    (cd "$st" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null) | gzip -1 >"$out.tmp"
    mv "$out.tmp" "$out"; echo "$kd" >"$TG/initrd.stamp"; rm -rf "$st"
    log "initrd.img $(du -k "$out" | cut -f1) KiB built in $(since "$t0") s"
}

cmd_build() {
    local t0; t0=$(now)
    mkdir -p "$TG"
    apt_install "${PKGS[@]}"
    build_kernel
    build_initrd
    log "build ok in $(since "$t0") s: kernel $(readlink "$TG/kernel/current"), $TG/initrd.img"
}
ensure_built() {
    [ -e "$TG/kernel/current/vmlinuz" ] && [ -e "$TG/initrd.img" ] || cmd_build
    build_initrd   # cheap no-op unless init/qemu-ga/busybox changed
}

# ----------------------------------------------------------------- libvirtd ---
our_pid() { # prints pid of our libvirtd if running
    local pid
    pid=$(cat "$TG/run/libvirtd.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        grep -q "libvirtd" "/proc/$pid/comm" 2>/dev/null && echo "$pid"
}

prepare_etc() {
    mkdir -p "$TG"/{etc-libvirt/qemu,etc,run,log} "$TG"/var/{lib,cache,log}/libvirt
    cp "$HERE/libvirtd.conf" "$HERE/qemu.conf" "$TG/etc-libvirt/"
    [ -e /etc/libvirt/libvirt.conf ] && cp /etc/libvirt/libvirt.conf "$TG/etc-libvirt/" || true
    cp /etc/passwd "$TG/etc/passwd"; cp /etc/group "$TG/etc/group"
    grep -q '^libvirt-qemu:' "$TG/etc/group" || echo 'libvirt-qemu:x:64055:' >>"$TG/etc/group"
    grep -q '^libvirt:' "$TG/etc/group" || echo 'libvirt:x:64056:' >>"$TG/etc/group"
    grep -q '^libvirt-qemu:' "$TG/etc/passwd" ||
        echo 'libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin' >>"$TG/etc/passwd"
}

cmd_libvirtd_start() {
    local pid t0 i
    if pid=$(our_pid); then log "libvirtd already running (pid $pid, $URI)"; return 0; fi
    if [ -S "$SOCK" ] && command virsh -q -c "$URI" uri >/dev/null 2>&1; then
        die "a foreign libvirtd already serves $SOCK (pid $(cat $SYS_PIDFILE 2>/dev/null)); stop it first"
    fi
    command -v libvirtd >/dev/null || apt_install "${PKGS[@]}"
    prepare_etc
    mkdir -p /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /run/libvirt
    t0=$(now)
    setsid unshare -m --propagation private -- /bin/sh -c '
        set -e
        mount --bind "$1/etc-libvirt" /etc/libvirt
        mount --bind "$1/etc/passwd" /etc/passwd
        mount --bind "$1/etc/group" /etc/group
        for d in lib cache log; do mount --bind "$1/var/$d/libvirt" /var/$d/libvirt; done
        exec /usr/sbin/libvirtd
    ' sh "$TG" </dev/null >>"$TG/log/libvirtd.log" 2>&1 &
    pid=$!
    echo "$pid" >"$TG/run/libvirtd.pid"
    for i in $(seq 200); do
        if [ -S "$SOCK" ] && command virsh -q -c "$URI" uri >/dev/null 2>&1; then
            log "libvirtd pid $pid up in $(since "$t0") s ($URI, socket $SOCK)"; return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    tail -20 "$TG/log/libvirtd.log" >&2
    die "libvirtd did not come up"
}

cmd_libvirtd_stop() {
    local pid i
    pid=$(our_pid) || { log "libvirtd not running"; rm -f "$TG/run/libvirtd.pid"; return 0; }
    kill -TERM "$pid"
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$TG/run/libvirtd.pid"
    log "libvirtd stopped (running domains keep running; libvirtd-start reattaches)"
}
ensure_libvirtd() { our_pid >/dev/null || cmd_libvirtd_start; }

# ------------------------------------------------------------------ domains ---
check_name() { [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || die "bad domain name '$1'"; }

mk_disk() { # path label size
    local path=$1 label=$2 size=$3 raw pop
    raw=$path.raw.tmp; pop=$path.pop.tmp
    rm -rf "$raw" "$pop"; mkdir -p "$pop"
    echo "$label" >"$pop/disk"
    [ "$label" = root ] || printf '%20d\n' 0 >"$pop/seq"
    truncate -s "$size" "$raw"
    mkfs.ext4 -q -F -L "$label" -E lazy_itable_init=0,lazy_journal_init=0 -d "$pop" "$raw"
    rm -rf "$pop"
    if [ "$DISK_FORMAT" = qcow2 ]; then
        qemu-img convert -f raw -O qcow2 "$raw" "$path"; rm -f "$raw"
    else
        mv "$raw" "$path"
    fi
}

# render_xml NAME  (uses globals SERIAL[], DISKPATH[], MEMORY_MB, CMDLINE_EXTRA)
render_xml() {
    local name=$1 d fmt disks="" ser
    for d in "${DISKS[@]}"; do
        fmt=$DISK_FORMAT
        [ -e "${DISKPATH[$d]}" ] && fmt=$(qemu-img info -U --output=json "${DISKPATH[$d]}" |
              sed -n 's/.*"format": *"\([a-z0-9]*\)".*/\1/p' | head -1)
        ser=""
        if [ -n "${SERIAL[$d]:-}" ]; then
            ser=${SERIAL[$d]//&/&amp;}; ser=${ser//</&lt;}; ser=${ser//>/&gt;}
            ser="
      <serial>$ser</serial>"
        fi
        disks+="    <disk type='file' device='disk'>
      <driver name='qemu' type='${fmt:-raw}'/>
      <source file='${DISKPATH[$d]}'/>
      <target dev='$d' bus='virtio'/>$ser
    </disk>
"
    done
    local tpl; tpl=$(cat "$HERE/domain.xml.in")
    tpl=${tpl//@DISKS@/${disks%$'\n'}}
    tpl=${tpl//@NAME@/$name}
    tpl=${tpl//@MEMORY_MB@/$MEMORY_MB}
    tpl=${tpl//@KERNEL@/$(readlink -f "$TG/kernel/current/vmlinuz")}
    tpl=${tpl//@INITRD@/$TG/initrd.img}
    tpl=${tpl//@CMDLINE_EXTRA@/$CMDLINE_EXTRA}
    tpl=${tpl//@CONSOLE_LOG@/$TG/domains/$name/console.log}
    if [ -n "$QEMU_USER" ]; then  # QEMU runs as this user under libvirt's DAC driver
        local sec="  <seclabel type='static' model='dac' relabel='yes'><label>$QEMU_USER</label></seclabel>"
        tpl="${tpl%</domain>*}$sec"$'\n''</domain>'
    fi
    printf '%s\n' "$tpl"
}

wait_agent() { # name timeout
    local t0 i; t0=$(now)
    while :; do
        if virsh qemu-agent-command "$1" '{"execute":"guest-ping"}' --timeout 2 >/dev/null 2>&1; then
            log "$1: guest agent answers after $(since "$t0") s"; return 0
        fi
        [ "$(virsh domstate "$1" 2>/dev/null)" = running ] || die "$1 is not running"
        awk -v a="$t0" -v b="$(now)" -v t="$2" 'BEGIN{exit !(b-a>t)}' && die "$1: no guest agent after $2 s"
        sleep 0.2
    done
}

declare -A SERIAL=() DISKPATH=()
MEMORY_MB=256 CMDLINE_EXTRA="" QEMU_USER="" FRESH=0 WAIT=1 TIMEOUT=${TESTGUEST_BOOT_TIMEOUT:-120}
parse_dom_opts() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --serial) [[ "$2" =~ ^vd[a-d]=.+$ ]] || die "--serial vdX=ID"; SERIAL[${2%%=*}]=${2#*=}; shift 2 ;;
            --disk) [[ "$2" =~ ^vd[a-d]=/.+$ ]] || die "--disk vdX=/abs/path"; DISKPATH[${2%%=*}]=${2#*=}; shift 2 ;;
            --interval) CMDLINE_EXTRA+=" tg.interval=$2"; shift 2 ;;
            --no-workload) CMDLINE_EXTRA+=" tg.workload=0"; shift ;;
            --memory) MEMORY_MB=$2; shift 2 ;;
            --qemu-user) [[ "$2" =~ ^\+[0-9]+:\+[0-9]+$ ]] || die "--qemu-user +UID:+GID"; QEMU_USER=$2; shift 2 ;;
            --fresh) FRESH=1; shift ;;
            --no-wait) WAIT=0; shift ;;
            --timeout) TIMEOUT=$2; shift 2 ;;
            *) die "unknown option $1" ;;
        esac
    done
    local d v
    for d in "${DISKS[@]}"; do
        v=TESTGUEST_SERIAL_${d^^}; [ -n "${!v:-}" ] && [ -z "${SERIAL[$d]:-}" ] && SERIAL[$d]=${!v}
        [ -n "${DISKPATH[$d]:-}" ] || DISKPATH[$d]=$TG/domains/$NAME/$d.$DISK_FORMAT
    done
    return 0
}

cmd_xml() {
    NAME=$1; shift; check_name "$NAME"; parse_dom_opts "$@"; render_xml "$NAME"
}

cmd_boot() {
    NAME=$1; shift; check_name "$NAME"; parse_dom_opts "$@"
    local t0 d D=$TG/domains/$NAME state
    t0=$(now)
    ensure_built
    ensure_libvirtd
    state=$(virsh domstate "$NAME" 2>/dev/null || echo none)
    if [ "$FRESH" = 1 ] && [ "$state" != none ]; then
        cmd_destroy "$NAME"; state=none
    fi
    if [ "$state" != running ]; then
        mkdir -p "$D"
        for d in "${DISKS[@]}"; do
            [ -e "${DISKPATH[$d]}" ] || mk_disk "${DISKPATH[$d]}" "${LABEL[$d]}" \
                "$([ $d = vda ] && echo "$ROOT_SIZE" || echo "$DATA_SIZE")"
        done
        render_xml "$NAME" >"$D/domain.xml"
        : >"$D/console.log"
        if [ -n "$QEMU_USER" ]; then  # dynamic_ownership may be 0: hand QEMU its files
            local u=${QEMU_USER%%:*} g=${QEMU_USER##*:}
            for d in "${DISKS[@]}"; do chown "${u#+}:${g#+}" "${DISKPATH[$d]}"; done
            chown "${u#+}:${g#+}" "$D/console.log"; chmod 0711 "$D"
        fi
        virsh define "$D/domain.xml" >/dev/null
        : >"$D/console.log"
        virsh start "$NAME" >/dev/null
        log "$NAME: started ($(since "$t0") s); console log $D/console.log"
    fi
    [ "$WAIT" = 1 ] && wait_agent "$NAME" "$TIMEOUT"
    log "$NAME: boot done in $(since "$t0") s"
}

cmd_destroy() { # NAME [--keep-disks]
    local name=$1; check_name "$name"
    if our_pid >/dev/null && virsh dominfo "$name" >/dev/null 2>&1; then
        virsh destroy "$name" >/dev/null 2>&1 || true
        virsh undefine "$name" --snapshots-metadata --checkpoints-metadata >/dev/null 2>&1 ||
            virsh undefine "$name" >/dev/null 2>&1 || true
    fi
    [ "${2:-}" = --keep-disks ] || rm -rf "$TG/domains/$name"
    log "$name: destroyed"
}

cmd_down() { # destroy every domain of our libvirtd, then stop it
    local n
    if our_pid >/dev/null; then
        for n in $(virsh list --all --name); do cmd_destroy "$n"; done
    fi
    cmd_libvirtd_stop
}

cmd_status() {
    local pid
    echo "dir:      $TG"
    echo "kernel:   $(readlink "$TG/kernel/current" 2>/dev/null || echo '(not built)')"
    echo "initrd:   $( [ -e "$TG/initrd.img" ] && du -k "$TG/initrd.img" | cut -f1 | sed 's/$/ KiB/' || echo '(not built)')"
    if pid=$(our_pid); then echo "libvirtd: pid $pid, $URI ($SOCK)"; virsh list --all
    else echo "libvirtd: not running"; fi
}

cmd_seq() { # NAME -> last "SEQ n uptime" console line
    grep -a '^SEQ ' "$TG/domains/$1/console.log" | tail -1
}

cmd_read_seq() { # IMAGE... -> "IMAGE seq needs_recovery" (works on live images / chains)
    local img tmp seq rec
    for img in "$@"; do
        tmp=$(mktemp "$TG/readseq.XXXXXX")
        qemu-img convert -U -O raw "$img" "$tmp"
        seq=$(debugfs -R 'cat /seq' "$tmp" 2>/dev/null | tr -d ' \n')
        rec=$(dumpe2fs -h "$tmp" 2>/dev/null | grep -q needs_recovery && echo needs_recovery || echo clean)
        rm -f "$tmp"
        echo "$img ${seq:-none} $rec"
    done
}

cmd_venv() {
    apt_install "${VENV_PKGS[@]}"
    if [ ! -x "$TG/venv/bin/python" ] || ! "$TG/venv/bin/python" -c 'import libvirt' 2>/dev/null; then
        /usr/bin/python3 -m venv "$TG/venv"
        "$TG/venv/bin/pip" install -q libvirt-python
    fi
    echo "$TG/venv/bin/python"
}

cmd_verify() { # NAME: freeze/thaw + snapshot smoke test via libvirt-python
    local py; py=$(cmd_venv)
    "$py" "$HERE/verify.py" "$1" "$TG"
}

usage() {
    cat <<EOF
usage: $0 COMMAND
  build                      apt deps, newest Debian cloud kernel, initramfs (idempotent)
  libvirtd-start|libvirtd-stop
  boot NAME [--serial vdX=ID]... [--disk vdX=/path]... [--interval S] [--no-workload]
            [--memory MB] [--qemu-user +UID:+GID] [--fresh] [--no-wait] [--timeout S]
  xml NAME [same options]    print the domain XML
  destroy NAME [--keep-disks]
  down                       destroy all domains, stop libvirtd
  status
  seq NAME                   last SEQ line of NAME's console
  read-seq IMAGE...          seq value + ext4 recovery state stored in disk images
  venv                       scratch venv with libvirt-python (prints its python)
  verify NAME                freeze/thaw/snapshot smoke test against a booted NAME
URI $URI, socket $SOCK, state under $TG
EOF
}

[ $# -ge 1 ] || { usage; exit 2; }
cmd=$1; shift
case "$cmd" in
    build) cmd_build ;;
    libvirtd-start) cmd_libvirtd_start ;;
    libvirtd-stop) cmd_libvirtd_stop ;;
    boot) [ $# -ge 1 ] || die "boot NAME"; cmd_boot "$@" ;;
    xml) [ $# -ge 1 ] || die "xml NAME"; ensure_built >/dev/null; cmd_xml "$@" ;;
    destroy) [ $# -ge 1 ] || die "destroy NAME"; cmd_destroy "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    seq) cmd_seq "$1" ;;
    read-seq) cmd_read_seq "$@" ;;
    venv) cmd_venv ;;
    verify) cmd_verify "$1" ;;
    -h|--help|help) usage ;;
    *) usage; exit 2 ;;
esac
