"""Local files on the real guest (issue 10): gc, delete and recover never
delete a file the guest still runs on (defect 1); recover waits out a block
job still running (defect 17); quotes in local_dir (defect 15); QEMU running
as libvirt-qemu under libvirt's DAC driver, as on stock Debian (defect 10).

The DAC cases run their guest under a second private libvirtd
(tools/testguest/dac-libvirtd.sh: dynamic_ownership = 1) that this module
starts and stops; the shared one is never restarted.

The guest's commit back is made to fail with the ``hypervisor.block_commit``
fault point (as a large or busy disk past the commit's deadline would): the
set ends failed with the guest's disks on overlays inside the set directory.

Run alone with its own guest, e.g.::

    CGSNAP_E2E_GUEST=files-e1 CGSNAP_E2E_KEEP_LIBVIRTD=1 TESTGUEST_DIR=/work/.testguest \\
        .venv/bin/pytest -q -s tests/e2e/test_local_files.py
"""

import json
import os
import shutil
import subprocess
import tempfile

import libvirt
import pytest

from cgsnap import faults

from ..functional.conftest import CLOUDS
from .conftest import ROOT, TG, RealGuest

DAC = os.path.join(ROOT, "tools", "testguest", "dac-libvirtd.sh")
QEMU_UID = 64055  # libvirt-qemu on Debian

DATA = ("vdb", "vdc", "vdd")


def _fail_with_guest_on_overlays(guest):
    """A create whose commit back fails, twice: returns (set dir, {dev: overlay})."""
    faults.arm("hypervisor.block_commit", "raise")
    rc, _, err = guest.cgsnap("create", "--all-volumes", guest.name)
    assert rc != 0 and err.count("\n") == 1, err
    assert (guest.tmp / "local").is_dir(), f"the create failed before its cut: {err}"
    (set_dir,) = list((guest.tmp / "local").iterdir())
    on = {d: s for d, s in guest.disk_sources().items() if s.startswith(f"{set_dir}/")}
    assert sorted(on) == ["vda", *DATA], guest.disk_sources()
    return set_dir, on


def test_gc_and_delete_refuse_the_files_the_guest_runs_on(real_guest):
    real_guest.write_conf(local_disks="qcow2", clouds_yaml=CLOUDS)
    set_dir, on = _fail_with_guest_on_overlays(real_guest)
    os.utime(set_dir, (1e9, 1e9))

    rc, out, err = real_guest.cgsnap("gc", "--grace-period", "0", "-f", "json")
    assert rc == 10, (out, err)
    (row,) = [r for r in json.loads(out) if r["kind"] == "local-dir"]
    assert row["action"] == "failed" and real_guest.name in row["reason"], row
    assert all(os.path.exists(p) for p in on.values()), "gc deleted the guest's disks"

    # The commit still fails: delete refuses, naming the domain, and keeps the files.
    rc, _, err = real_guest.cgsnap("delete", set_dir.name)
    assert rc == 10 and err.count("\n") == 1 and real_guest.name in err, err
    assert all(os.path.exists(p) for p in on.values()), "delete deleted the guest's disks"
    assert real_guest.disk_sources() != real_guest.original

    # Once the commit works, a retried delete puts the disks back, then deletes.
    faults.reset()
    rc, _, err = real_guest.cgsnap("delete", set_dir.name)
    assert rc == 0, err
    assert real_guest.disk_sources() == real_guest.original
    assert not set_dir.exists()
    real_guest.wait_progress(rounds=2)


def test_recover_waits_for_a_block_job_still_running(real_guest):
    """A slow commit is still running (as after a SIGKILL mid-commit): recover
    waits it out and pivots instead of failing or deleting under it."""
    set_dir, on = _fail_with_guest_on_overlays(real_guest)
    faults.reset()
    flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW
    real_guest.dom.blockCommit("vdb", None, None, 4, flags)  # 4 MiB/s, left running
    assert real_guest.dom.blockJobInfo("vdb", 0)
    rc, out, err = real_guest.cgsnap("recover", "-f", "json")
    assert rc == 0, (out, err)
    assert [r["result"] for r in json.loads(out)] == ["ok"], out
    assert real_guest.disk_sources() == real_guest.original
    assert not set_dir.exists() and not real_guest.dom.blockJobInfo("vdb", 0)
    real_guest.wait_progress(rounds=2)


def test_quotes_in_local_dir(real_guest):
    real_guest.conf.write_text(real_guest.conf.read_text().replace(
        f"local_dir = {real_guest.tmp}/local", f"local_dir = {real_guest.tmp}/o'brien \"x\""))
    rc, out, err = real_guest.cgsnap("create", "--all-volumes", real_guest.name, "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    assert all("o'brien \"x\"/" in m["path"] for m in doc["members"]), doc["members"]
    assert all(os.path.getsize(m["path"]) > 0 for m in doc["members"])
    assert real_guest.cgsnap("delete", doc["id"])[0] == 0
    real_guest.wait_progress(rounds=2)


def test_verify_finds_a_real_local_copy_changed_behind_cgsnaps_back(real_guest):
    """Issue 14: verify reads the real local copies of a real guest's set (the
    size and sha256 the create recorded after the thaw); one flipped byte in a
    copy is drift, exit 9, naming the disk."""
    real_guest.write_conf(local_disks="qcow2", clouds_yaml=CLOUDS)
    rc, out, err = real_guest.cgsnap("create", "--all-volumes", real_guest.name, "-f", "json")
    assert rc == 0, err
    doc = json.loads(out)
    real_guest.wait_progress(rounds=2)
    assert all(m.get("sha256") and m.get("size_bytes") for m in doc["members"]), doc["members"]
    # what a restore will need, read from the real libvirtd before the freeze
    machine = doc["machine"]
    assert [d["target"] for d in machine["disks"]] == ["vda", *DATA]
    assert all(d["size_bytes"] and d["size_bytes"] > 0 for d in machine["disks"]), machine
    assert machine["machine_type"] and machine["vcpus"] >= 1 and machine["memory_kib"] > 0
    rc, out, err = real_guest.cgsnap("verify", doc["id"], "-f", "json")
    assert rc == 0 and json.loads(out)[0]["result"] == "ok", (out, err)
    victim = next(m for m in doc["members"] if m["device"] == "vdc")
    with open(victim["path"], "r+b") as f:
        f.seek(victim["size_bytes"] // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    rc, out, err = real_guest.cgsnap("verify", doc["id"], "-f", "json")
    assert rc == 9, (out, err)
    (row,) = json.loads(out)
    assert row["result"] == "broken" and len(row["problems"]) == 1
    assert row["problems"][0].startswith("vdc: local copy") and "sha256" in row["problems"][0]
    assert err.count("\n") == 1 and doc["id"] in err
    assert real_guest.cgsnap("delete", doc["id"])[0] == 0


# -- QEMU as libvirt-qemu under the DAC driver (defect 10) ----------------------

@pytest.fixture(scope="module")
def dac_uri(libvirtd):
    proc = subprocess.run([DAC, "start"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        pytest.fail(f"dac-libvirtd.sh start failed:\n{proc.stderr[-2000:]}", pytrace=False)
    yield proc.stdout.strip()
    subprocess.run([DAC, "stop"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def dac_guest_name(dac_uri):
    name = os.environ.get("CGSNAP_E2E_DAC_GUEST", "files-dac")
    env = dict(os.environ, TESTGUEST_URI=dac_uri)
    proc = subprocess.run([TG, "boot", name, "--fresh", "--interval", "0.02", "--qemu-user",
                           f"+{QEMU_UID}:+{QEMU_UID}"],
                          capture_output=True, text=True, timeout=300, env=env)
    if proc.returncode != 0:
        pytest.fail(f"testguest.sh boot failed:\n{proc.stderr[-2000:]}", pytrace=False)
    yield name
    subprocess.run([TG, "destroy", name], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def dac_guest(dac_guest_name, dac_uri, tmp_path):
    g = RealGuest(dac_guest_name, tmp_path, uri=dac_uri)
    g.wait_progress()
    yield g
    assert g.freeze_status() == "thawed"
    assert g.disk_sources() == g.original


def _qemu_uid(name):
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f"guest={name},".encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/status") as f:
                return int(next(ln for ln in f if ln.startswith("Uid:")).split()[1])
        except OSError:
            continue
    return None


def _mode(path):
    return os.stat(path).st_mode & 0o777


def _set_local_dir(guest, local_dir):
    guest.conf.write_text(guest.conf.read_text().replace(
        f"local_dir = {guest.tmp}/local", f"local_dir = {local_dir}"))


def test_dac_local_and_memory_snapshots_work_with_private_modes(dac_guest):
    assert _qemu_uid(dac_guest.name) == QEMU_UID
    # A directory QEMU may traverse, as /var/lib/cgsnap would be (pytest's tmp is 0700).
    base = tempfile.mkdtemp(prefix="cgsnap-files-dac-", dir="/var/tmp")
    try:
        os.chmod(base, 0o711)
        _set_local_dir(dac_guest, f"{base}/local")
        docs = []
        for extra in ([], ["--memory"]):
            rc, out, err = dac_guest.cgsnap("create", "--all-volumes", dac_guest.name,
                                            "-f", "json", *extra)
            assert rc == 0, err
            docs.append(json.loads(out))
            dac_guest.wait_progress(rounds=2)
        for doc in docs:
            set_dir = os.path.dirname(doc["members"][0]["path"])
            assert _mode(set_dir) == 0o711 and _mode(os.path.dirname(set_dir)) == 0o711
            assert sorted(m["device"] for m in doc["members"]) == ["vda", *DATA]
            for m in doc["members"]:
                assert _mode(m["path"]) == 0o600 and os.path.getsize(m["path"]) > 0, m
        mem = docs[1]["memory"]["path"]
        assert _mode(mem) == 0o600 and os.path.getsize(mem) > 1 << 20
        state = dac_guest.tmp / "state"
        assert _mode(state) == 0o711
        assert _mode(state / "catalog.db") == 0o600 and _mode(state / "flows.db") == 0o600
        for doc in docs:
            assert dac_guest.cgsnap("delete", doc["id"])[0] == 0
        assert not os.listdir(f"{base}/local")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_dac_local_dir_qemu_cannot_reach_is_refused_before_the_freeze(dac_guest):
    """The default local_dir of root lies under /root (0700); pytest's tmp
    (/tmp/pytest-of-root, 0700) is the same case.  Today the snapshot fails
    inside the freeze window; it must be refused before it (exit 4)."""
    private = dac_guest.tmp / "local"
    rc, _, err = dac_guest.cgsnap("create", "--all-volumes", dac_guest.name)
    assert rc == 4 and err.count("\n") == 1, err
    assert f"uid {QEMU_UID}" in err and "0700" in err and "local_dir" in err, err
    assert not private.exists() or not os.listdir(private)
    dac_guest.wait_progress(rounds=2)
