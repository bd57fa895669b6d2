"""The fault-injection matrix: the real create flow against the real dev cloud
(Keystone + Cinder) and libvirt's test driver, with a fault injected at every
task of the create flow and just before and after every external call.

Actions:
* ``raise`` -- an exception at that point (first hit);
* ``hang``  -- a hang at that point past the freeze deadline
  (freeze_timeout 1 s, thaw-guard margin 0.5 s, hang 2.5 s);
* ``kill``  -- SIGKILL of the cgsnap process (a subprocess), then
  ``cgsnap recover`` as the next cron run would;
* ``unreachable`` -- from that point on Cinder's endpoint is a closed port
  (real connection errors), then ``cgsnap recover`` once it is back.

After every case: the guest is thawed (test driver freeze count 0, in-process
cases), no Cinder snapshot of a non-available set exists, no manifest is left
``creating``/``deleting``, an available set is complete and filesystem
consistent, and a failure exits with a documented code and one stderr line.
The real-guest subset (SIGKILL in freeze, snapshot wait and thaw, measured by
qemu-ga) is tests/e2e/test_guard.py.

The matrix runs twice over the points of the volume cut: once on an instance
whose volumes are cut one by one (``per-volume``), once on an instance whose
volumes form one group of the consistent type ``fake-consistent`` (``group``:
one group snapshot, members renamed after the thaw).  Orphans are counted by
volume, not by metadata, so an untagged group-snapshot member counts too.
"""

import json
import os
import signal
import subprocess
import time

import pytest

from cgsnap import drivers, faults

from .. import faultcli
from .. import lab as testlab
from ..functional.conftest import ADMIN_CLOUD, CLOUD, CLOUDS, Instance
from .conftest import RESULTS

TASKS = ["DiscoverInstance", "RecordSet", "CheckRootDisk", "CheckVolumes", "CheckQuota",
         "ChooseVolumeCut", "CheckLocalDisks", "CheckMemory", "CheckImageStore", "CheckAgent",
         "StartThawGuard",
         "CleanupVolumeSnapshots", "CleanupImages", "CleanupLocalDisks", "FreezeGuest",
         "SnapshotLocalDisks", "SnapshotVolumes", "ThawGuest", "TagGroupSnapshotMembers",
         "ExportLocalDisks",
         "RecordMemoryImage", "UploadRootImage", "FinalizeSet"]
BOUNDARIES = ["hypervisor.get_instance", "hypervisor.ping_agent", "hypervisor.freeze",
              "hypervisor.freeze.after", "volume.get_volume", "volume.get_limits",
              "volume.create_snapshot", "volume.create_snapshot.after",
              "task.SnapshotVolumes.created", "volume.list_snapshots", "hypervisor.thaw",
              "hypervisor.thaw.after"]
STORAGE = ["volume.get_volume", "volume.get_limits", "volume.create_snapshot",
           "volume.create_snapshot.after", "task.SnapshotVolumes.created",
           "volume.list_snapshots"]
# The group cut's own points (the tasks around it are in TASKS already).
GROUP_TASKS = ["ChooseVolumeCut", "SnapshotVolumes", "ThawGuest", "TagGroupSnapshotMembers",
               "FinalizeSet"]
GROUP_STORAGE = ["volume.get_group", "volume.create_group_snapshot",
                 "volume.create_group_snapshot.after", "task.SnapshotVolumes.created",
                 "volume.get_group_snapshot", "volume.tag_snapshot"]
ALL = ("raise", "hang", "kill")
CASES = ([("per-volume", f"task.{t}", a) for t in TASKS for a in ALL]
         + [("per-volume", p, a) for p in BOUNDARIES for a in ALL]
         + [("per-volume", p, "unreachable") for p in STORAGE]
         + [("group", f"task.{t}", a) for t in GROUP_TASKS for a in ALL]
         + [("group", p, a) for p in GROUP_STORAGE for a in ALL]
         + [("group", p, "unreachable") for p in GROUP_STORAGE])
# `make fault-matrix-production` runs the cases where the shape of the cloud
# matters (CGSNAP_FAULT_MATRIX=storage): every storage call of both cuts, with
# every action, and a kill at each task of the window.  The rest of the matrix
# is cgsnap's own code and the test driver, the same on any cloud.
WINDOW_TASKS = {"task.FreezeGuest", "task.SnapshotVolumes", "task.ThawGuest",
                "task.TagGroupSnapshotMembers", "task.FinalizeSet"}
if os.environ.get("CGSNAP_FAULT_MATRIX") == "storage":
    CASES = [(k, p, a) for k, p, a in CASES
             if p in STORAGE or p in GROUP_STORAGE or (p in WINDOW_TASKS and a == "kill")]
DOCUMENTED = {0, 3, 4, 5, 6, 7, 8, 9, 10}
# Killed after a successful thaw: recover completes the set from its logbook.
AFTER_THAW = {"task.TagGroupSnapshotMembers", "volume.tag_snapshot",
              "task.ExportLocalDisks", "task.RecordMemoryImage", "task.UploadRootImage",
              "task.FinalizeSet"}
# Killed before the manifest is written: nothing was created, nothing to recover.
BEFORE_RECORD = {"hypervisor.get_instance", "task.DiscoverInstance", "task.RecordSet"}


def _matrix_instance(tmp_path_factory, name, group_type=None):
    if not os.path.exists(CLOUDS):
        pytest.fail("dev cloud not set up: run `make fault-matrix`", pytrace=False)
    lab = testlab.CinderLab(CLOUDS, cloud=CLOUD, admin_cloud=ADMIN_CLOUD)
    tmp = tmp_path_factory.mktemp(name)
    inst = Instance(lab, tmp, 3, name, group_type)
    inst.conf.write_text(inst.conf.read_text().replace(
        "freeze_timeout = 30", "freeze_timeout = 1.0\nthaw_guard_margin = 0.5"))
    if group_type:
        inst.add_config(f"[snapshot]\nconsistent_group_types = {group_type}\n")
    return inst


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    made = {}

    def get(kind):
        if kind not in made:
            made[kind] = _matrix_instance(tmp_path_factory, f"matrix-{kind}",
                                          "fake-consistent" if kind == "group" else None)
        return made[kind]

    yield get
    for inst in made.values():
        inst.lab.delete_volumes(inst.all_volume_ids())


def _instance_snapshots(inst):
    """Every snapshot of the instance's volumes, tagged or not."""
    vols = set(inst.all_volume_ids())
    snaps = inst.lab.admin.volume_snapshots.list(search_opts={"all_tenants": 1})
    return [s for s in snaps if s.volume_id in vols]


def _orphans(inst, existed):
    """Snapshots made during this case whose set is not available."""
    rc, out, _ = inst.cgsnap("list", "-f", "json")
    live = {r["id"] for r in json.loads(out) if r["status"] == "available"}
    live_groups = {json.loads(inst.cgsnap("show", sid, "-f", "json")[1])["group_snapshot"]["id"]
                   for sid in live} if inst.group_id else set()
    return ([s.id for s in _instance_snapshots(inst)
             if s.id not in existed and (s.metadata or {}).get("cgsnap_set_id") not in live]
            + [g.id for g in inst.cinder_group_snapshots() if g.id not in live_groups])


def _sweep(inst):
    """Start the next case clean, whatever this one left."""
    _, out, _ = inst.cgsnap("list", "-f", "json")
    for s in json.loads(out):
        inst.cgsnap("delete", s["id"])
    if inst.group_id:
        inst.lab.delete_group_snapshots(inst.group_id)
    for s in _instance_snapshots(inst):
        try:
            inst.lab.admin.volume_snapshots.delete(s.id, force=True)
        except Exception:  # noqa: BLE001 - best effort between cases
            pass


def _run_in_process(inst, point, action):
    spec = {"raise": "raise@1", "hang": "hang=2.5@1", "unreachable": "unreachable@1"}[action]
    faults.arm(point, spec)
    try:
        return inst.cgsnap("create", "--all-volumes", inst.name, "-f", "json")
    finally:
        faults.reset()
        drivers.override(None)  # fresh clients: an 'unreachable' fault broke the old ones


def _run_killed(inst, point):
    env = dict(os.environ, CGSNAP_FAULT=f"{point}:kill")
    proc = subprocess.run([*faultcli.COMMAND, "--config-file", str(inst.conf), "create",
                           "--all-volumes", inst.name, "-f", "json"], env=env, capture_output=True,
                          text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("kind,point,action", CASES,
                         ids=[f"{k}:{p}:{a}" for k, p, a in CASES])
def test_fault(instances, kind, point, action):
    inst = instances(kind)
    existed = {s.id for s in _instance_snapshots(inst)}
    t0 = time.monotonic()
    if action == "kill":
        rc, out, err = _run_killed(inst, point)
    else:
        rc, out, err = _run_in_process(inst, point, action)
    # What the next cron run does first.
    rec_rc, rec_out, rec_err = inst.cgsnap("recover", "-f", "json")
    frozen_left = inst.frozen_count()
    orphans = _orphans(inst, existed)
    _, listing, _ = inst.cgsnap("list", "-f", "json")
    sets = json.loads(listing)
    problems = []
    if rec_rc != 0:
        problems.append(f"recover exited {rec_rc}: {rec_err.strip()}")
    if any(s["status"] in ("creating", "deleting") for s in sets):
        problems.append("a manifest is left creating/deleting")
    if action == "kill":
        if rc not in (-signal.SIGKILL, 0):
            problems.append(f"expected SIGKILL, got rc {rc}")
        actions = [r["action"] for r in json.loads(rec_out or "[]")]
        expected = ([] if point in BEFORE_RECORD else
                    ["completed"] if point in AFTER_THAW else ["reverted"])
        if actions != expected:
            problems.append(f"recover did {actions}, expected {expected}")
        if expected == ["completed"] and [s["status"] for s in sets] != ["available"]:
            problems.append("a completed set is not available")
    elif rc == 0:
        doc = json.loads(out)
        if not (doc["status"] == "available" and doc["consistency"] == "filesystem"
                and doc["freeze"]["guard"] == "disarmed"
                and all(m["status"] == "available" for m in doc["members"])):
            problems.append("rc 0 but the set is not complete and consistent")
        expected_cut = "group" if kind == "group" else "none"
        if doc["backend_consistency"] != expected_cut:
            problems.append(f"backend_consistency {doc['backend_consistency']}, "
                            f"expected {expected_cut}")
    else:
        if rc not in DOCUMENTED:
            problems.append(f"undocumented exit code {rc}")
        if err.count("\n") != 1 or "Traceback" in err or not err.startswith("cgsnap: error:"):
            problems.append(f"stderr is not one clear line: {err!r}")
        failed = [s for s in sets if s["status"] == "failed"]
        if sets and not failed:
            problems.append("failure exit but no failed manifest")
    if frozen_left:
        problems.append(f"{frozen_left} filesystems left frozen")
    if orphans:
        problems.append(f"orphans: {orphans}")
    outcome = "available" if rc == 0 else ("killed" if rc < 0 else f"failed:{rc}")
    RESULTS.append({"case": f"{kind}:{point}:{action}", "rc": rc, "outcome": outcome,
                    "seconds": time.monotonic() - t0, "frozen_left": frozen_left,
                    "orphans": len(orphans), "ok": not problems})
    _sweep(inst)
    assert not problems, problems


@pytest.mark.parametrize("kind", ["per-volume", "group"])
def test_gc_finds_nothing_after_the_matrix(instances, kind):
    """Runs after every case (definition order): each cleaned up after itself."""
    rc, out, err = instances(kind).cgsnap("gc", "--dry-run", "--grace-period", "0", "--no-images",
                               "-f", "json")
    assert rc == 0, err
    assert [r for r in json.loads(out) if r["action"] != "kept"] == []
