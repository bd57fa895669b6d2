#!/usr/bin/env python3
"""Smoke test of a booted test guest through libvirt-python.

usage: verify.py NAME TESTGUEST_DIR   (via: testguest.sh verify NAME)

Checks fsFreeze/fsThaw (+ workload stalls while frozen), a quiesced
disk-only external snapshot (DISK_ONLY|ATOMIC|NO_METADATA|QUIESCE),
an external memory snapshot (LIVE|ATOMIC) and active blockCommit + pivot.
Prints timings; exits non-zero on failure.
"""
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import libvirt
import libvirt_qemu

NAME, TG = sys.argv[1], sys.argv[2]
CONSOLE = os.path.join(TG, "domains", NAME, "console.log")
SNAPDIR = os.path.join(TG, "domains", NAME, "snap")
DATA = ["vdb", "vdc", "vdd"]
failures = []


def last_seq():
    with open(CONSOLE, "rb") as f:
        seqs = re.findall(rb"^SEQ (\d+) ", f.read(), re.M)
    return int(seqs[-1]) if seqs else 0


def agent(dom, cmd):
    return json.loads(libvirt_qemu.qemuAgentCommand(dom, json.dumps({"execute": cmd}), 5, 0))


def timed(label, fn):
    t0 = time.monotonic()
    r = fn()
    print(f"  {label}: {time.monotonic() - t0:.3f} s -> {r!r}")
    return r


def check(cond, what):
    print(f"  [{'ok' if cond else 'FAIL'}] {what}")
    if not cond:
        failures.append(what)


def disks(dom):
    x = ET.fromstring(dom.XMLDesc())
    out = {}
    for d in x.findall("devices/disk"):
        tgt = d.find("target").get("dev")
        src = d.find("source").get("file")
        fmt = d.find("driver").get("type")
        out[tgt] = (src, fmt)
    return out


def read_seq(img):
    """seq stored on an image (qemu-img convert -U + debugfs)."""
    out = subprocess.run([os.path.join(os.path.dirname(__file__), "testguest.sh"),
                          "read-seq", img], capture_output=True, text=True, check=True)
    _, seq, state = out.stdout.split()
    return int(seq), state


conn = libvirt.open("qemu:///system")
dom = conn.lookupByName(NAME)
os.makedirs(SNAPDIR, exist_ok=True)

print("fsinfo:")
for fs in agent(dom, "guest-get-fsinfo")["return"]:
    print("  ", fs["mountpoint"], fs["type"], [(d.get("dev"), d.get("serial")) for d in fs["disk"]])

print("freeze/thaw:")
n = timed("fsFreeze()", lambda: dom.fsFreeze())
check(n == 4, f"fsFreeze froze {n} filesystems (expect 4)")
check(agent(dom, "guest-fsfreeze-status")["return"] == "frozen", "guest-fsfreeze-status == frozen")
s1 = last_seq()
time.sleep(2)
s2 = last_seq()
check(s1 == s2, f"console SEQ stalled while frozen ({s1} -> {s2})")
n = timed("fsThaw()", lambda: dom.fsThaw())
check(n == 4, f"fsThaw thawed {n}")
time.sleep(1.5)
s3 = last_seq()
check(s3 > s2, f"console SEQ resumed after thaw ({s2} -> {s3})")

print("disk-only external snapshot (quiesced, no metadata):")
orig = disks(dom)
tag = str(int(time.time()))
dd = "".join(
    f"<disk name='{t}' snapshot='external' type='file'>"
    f"<driver type='qcow2'/><source file='{SNAPDIR}/{t}.ov-{tag}.qcow2'/></disk>"
    for t in sorted(orig))
xml = f"<domainsnapshot><name>ds-{tag}</name><disks>{dd}</disks></domainsnapshot>"
flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
         | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE)
timed("snapshotCreateXML(DISK_ONLY|ATOMIC|NO_METADATA|QUIESCE)", lambda: dom.snapshotCreateXML(xml, flags) and "ok")
now = disks(dom)
check(all(now[t][0].endswith(f".ov-{tag}.qcow2") for t in orig), "all disks switched to overlays")
check(agent(dom, "guest-fsfreeze-status")["return"] == "thawed", "guest thawed after quiesced snapshot")
seqs = {}
for t in DATA:
    seqs[t] = read_seq(orig[t][0])
print("  base images (now read-only backing files):", seqs)
v = [seqs[t][0] for t in DATA]
check(v[0] >= v[1] >= v[2] >= v[0] - 1, f"consistent cut d1>=d2>=d3>=d1-1: {v}")
check(all(seqs[t][1] == "clean" for t in DATA), "quiesced bases have no needs_recovery")

print("blockCommit active layer + pivot:")
for t in sorted(orig):
    t0 = time.monotonic()
    dom.blockCommit(t, None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE
                    | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)
    while True:
        info = dom.blockJobInfo(t, 0)
        if info and info["end"] and info["cur"] == info["end"]:
            break
        time.sleep(0.05)
    dom.blockJobAbort(t, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
    while dom.blockJobInfo(t, 0):
        time.sleep(0.05)
    print(f"  {t}: commit+pivot {time.monotonic() - t0:.3f} s")
now = disks(dom)
check(all(now[t][0] == orig[t][0] for t in orig), "all disks pivoted back to base images")
for t in orig:
    os.unlink(f"{SNAPDIR}/{t}.ov-{tag}.qcow2")

print("external memory+disk snapshot (LIVE|ATOMIC, no metadata):")
mem = f"{SNAPDIR}/mem-{tag}.sav"
dd = "".join(
    f"<disk name='{t}' snapshot='external' type='file'>"
    f"<driver type='qcow2'/><source file='{SNAPDIR}/{t}.mem-{tag}.qcow2'/></disk>"
    for t in sorted(orig))
xml = (f"<domainsnapshot><name>ms-{tag}</name><memory snapshot='external' file='{mem}'/>"
       f"<disks>{dd}</disks></domainsnapshot>")
flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
         | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA)
timed("snapshotCreateXML(LIVE|ATOMIC|NO_METADATA, memory external)",
      lambda: dom.snapshotCreateXML(xml, flags) and "ok")
check(os.path.getsize(mem) > 0, f"memory state file written ({os.path.getsize(mem)} bytes)")
check(dom.isActive() == 1 and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING, "domain still running")
s4 = last_seq()
time.sleep(1.5)
check(last_seq() > s4, "workload progresses after memory snapshot")
for t in sorted(orig):
    dom.blockCommit(t, None, None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
    while True:
        info = dom.blockJobInfo(t, 0)
        if info and info["end"] and info["cur"] == info["end"]:
            break
        time.sleep(0.05)
    dom.blockJobAbort(t, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
    while dom.blockJobInfo(t, 0):
        time.sleep(0.05)
    os.unlink(f"{SNAPDIR}/{t}.mem-{tag}.qcow2")
os.unlink(mem)
check(all(disks(dom)[t][0] == orig[t][0] for t in orig), "memory-snapshot overlays committed back")
check(agent(dom, "guest-ping") == {"return": {}}, "agent still answers")

print("RESULT:", "FAIL " + "; ".join(failures) if failures else "all checks passed")
sys.exit(1 if failures else 0)
