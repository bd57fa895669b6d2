"""Local files on the real guest (issue 10): gc, delete and recover never
delete a file the guest still runs on (defect 1); recover waits out a block
job still running (defect 17); quotes in local_dir (defect 15).

The guest's commit back is made to fail with the ``hypervisor.block_commit``
fault point (as a large or busy disk past the commit's deadline would): the
set ends failed with the guest's disks on overlays inside the set directory.

Run alone with its own guest, e.g.::

    CGSNAP_E2E_GUEST=files-e1 CGSNAP_E2E_KEEP_LIBVIRTD=1 TESTGUEST_DIR=/work/.testguest \\
        .venv/bin/pytest -q -s tests/e2e/test_local_files.py
"""

import json
import os

import libvirt

from cgsnap import faults

from ..functional.conftest import CLOUDS

DATA = ("vdb", "vdc", "vdd")


def _fail_with_guest_on_overlays(guest):
    """A create whose commit back fails, twice: returns (set dir, {dev: overlay})."""
    faults.arm("hypervisor.block_commit", "raise")
    rc, _, err = guest.cgsnap("create", "--all-volumes", guest.name)
    assert rc != 0 and err.count("\n") == 1, err
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
    real_guest.dom.blockCommit("vdb", None, None, 1, flags)  # 1 MiB/s, left running
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
