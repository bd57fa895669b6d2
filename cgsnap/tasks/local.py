"""Tasks for file-backed disks on the hypervisor host.

Used for local disks (``local_disks = qcow2``, plain libvirt/KVM hosts) and
for an image-backed root (then :mod:`.image` uploads the copy to Glance).
Inside the freeze
window one atomic disk-only external snapshot switches every local disk to a
new overlay, which freezes the original file in time.  After the thaw the
original is copied to a standalone qcow2 in ``local_dir/<set id>/`` and the
overlay is block-committed back, so the guest's disk chain ends as it began.
"""

import os
import shutil
import subprocess

from oslo_log import log as logging

from cgsnap import diskuse, exception, faults, state
from cgsnap import manifest as manifest_mod
from cgsnap.conf import CONF
from cgsnap.tasks.base import CgsnapTask

LOG = logging.getLogger(__name__)


JOBS_DEADLINE_S = 300.0  # libvirt calls of a dead process still running: wait this long

OVERLAY_KINDS = (manifest_mod.KIND_LOCAL_QCOW2, manifest_mod.KIND_GLANCE_IMAGE)


def overlay_members(manifest):
    """Members cut by an external disk-only snapshot on the host: local disks
    (kept as a local copy) and an image-backed root (uploaded to Glance)."""
    return [m for m in manifest["members"] if m["kind"] in OVERLAY_KINDS]


def set_dir(set_id):
    base = CONF.snapshot.local_dir or os.path.join(state.state_dir(), "local")
    return os.path.join(os.path.abspath(os.path.expanduser(base)), set_id)


def remove_empty_set_dir(set_id):
    """Remove the set's directory if a pre-check made it and nothing was put
    in it (a later pre-check failed); a directory with files is left to
    :func:`put_disks_back`, which knows whether a disk still uses them."""
    try:
        os.rmdir(set_dir(set_id))
    except OSError:
        pass


def ensure_set_dir(set_id):
    """Create the set's directory (and ``local_dir``) with mode 0711: QEMU must
    traverse it to open an overlay by its path.  Refuses (exit 4) if it
    cannot be made."""
    path = set_dir(set_id)
    try:
        state.make_dir(os.path.dirname(path))
        state.make_dir(path)
    except OSError as e:
        raise exception.Refused(f"cannot create {path}: {e.strerror}") from None
    return path


def blocked_for(path, uid, gid):
    """The first directory on the way to ``path`` (itself included) that
    ``uid``/``gid`` (and the user's other groups, where known) may not
    search, or None.  Root may search anything."""
    if uid == 0:
        return None
    import pwd
    groups = {gid}
    try:
        groups.update(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        pass  # a uid without a name here (libvirtd's own passwd): its primary group only
    parts = os.path.abspath(path).split(os.sep)
    for i in range(1, len(parts) + 1):
        d = os.sep.join(parts[:i]) or os.sep
        st = os.stat(d)
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return d, st
    return None


def check_qemu_reaches(hypervisor, instance, out_dir):
    """Refuse before the freeze if QEMU (running as its DAC user) could not
    open an overlay in ``out_dir``: the snapshot would fail inside the window.
    A root user's default ``local_dir`` under /root (0700) is the usual case."""
    who = hypervisor.qemu_dac_user(instance["id"]) if instance.get("active") else None
    if who is None:
        return
    blocked = blocked_for(out_dir, *who)
    if blocked:
        d, st = blocked
        try:
            os.rmdir(out_dir)  # refused before anything was written: leave nothing
        except OSError:
            pass
        raise exception.Refused(
            f"QEMU runs {instance['name']} as uid {who[0]} (libvirt's DAC driver), which cannot "
            f"reach {out_dir}: {d} is mode {st.st_mode & 0o777:04o}, owner uid {st.st_uid}; set "
            "[snapshot] local_dir to a directory whose every parent it may search (for example "
            "/var/lib/cgsnap/local)")


class CheckLocalDisks(CgsnapTask):
    """Before the freeze: every local member is a file we can snapshot, and
    the copy directory has room for all of them."""

    default_provides = "local_plan"

    def execute(self, set_id, manifest, instance):
        self.fault_point()
        members = overlay_members(manifest)
        if not members:
            return {}
        if not self.drivers.hypervisor.supports_disk_snapshots():
            raise exception.Refused(
                f"disks {', '.join(m['device'] for m in members)} are file-backed and "
                f"{self.drivers.hypervisor.uri} cannot take disk-only snapshots")
        disks = {d["device"]: d for d in instance["disks"]}
        out_dir = ensure_set_dir(set_id)
        check_qemu_reaches(self.drivers.hypervisor, instance, out_dir)
        plan, need = {}, 0
        for m in members:
            disk = disks[m["device"]]
            if disk["source_type"] != "file" or not disk["source"]:
                raise exception.Refused(
                    f"disk {m['device']} is {disk['source_type']}-backed; only file-backed "
                    "disks can be captured locally")
            if not os.path.isfile(disk["source"]):
                raise exception.Refused(f"disk {m['device']}: {disk['source']} is not readable")
            if self.drivers.hypervisor.block_job_active(instance["id"], m["device"]):
                raise exception.Refused(
                    f"disk {m['device']} of {instance['name']} is busy in a block job "
                    "(another snapshot, copy or commit); try again when it ends")
            need += os.path.getsize(disk["source"])
            plan[m["device"]] = {"base": disk["source"], "name": m["name"], "kind": m["kind"],
                                 "overlay": os.path.join(out_dir, f"{m['name']}.overlay.qcow2"),
                                 "copy": os.path.join(out_dir, f"{m['name']}.qcow2")}
        free = shutil.disk_usage(out_dir).free
        if free < need:
            raise exception.Refused(
                f"{out_dir} has {free >> 20} MiB free; the local disks need {need >> 20} MiB")
        return plan

    def revert(self, set_id, **kwargs):
        remove_empty_set_dir(set_id)  # runs after CleanupLocalDisks emptied it


class CleanupLocalDisks(CgsnapTask):
    """Revert-only: put every disk back on its original file and delete the
    overlays and copies of this set."""

    def execute(self, set_id, local_plan):
        self.fault_point()

    def revert(self, set_id, instance, local_plan, **kwargs):
        try:
            for problem in put_disks_back(self.drivers.hypervisor, instance["id"],
                                          list(local_plan or {}), set_id):
                LOG.error("revert: %s", problem)
        except Exception as e:  # log and swallow: later reverts must still run
            LOG.error("revert: could not put the disks of %s back: %s", instance["name"], e)


def put_disks_back(hypervisor, instance_id, devices, set_id):
    """Commit back every one of ``devices`` still running on an overlay in
    this set's directory, then remove the directory (overlays, copies,
    memory image).  Returns what could not be undone; the directory is kept
    while any disk of any domain still uses a file in it.  Used by reverts,
    recovery and the delete flow.

    First it waits out libvirt calls still running on the domain (a snapshot
    or block job started by a process that died): committing or deleting
    under them would race them."""
    out_dir = set_dir(set_id)
    problems = []
    if devices:
        try:
            hypervisor.wait_for_jobs(instance_id, devices, JOBS_DEADLINE_S)
        except exception.NotFound:
            devices = []  # the instance is gone: it runs on nothing here
        except exception.CgsnapError as e:
            return [f"libvirt jobs still running on {instance_id} ({e}); nothing was "
                    "committed or deleted"]
    for dev in devices:
        try:
            src = hypervisor.disk_source(instance_id, dev)
            if src and src.startswith(out_dir + os.sep):
                hypervisor.commit_active_layer(instance_id, dev)
        except exception.NotFound:
            continue  # the instance or the disk is gone; the in-use check still runs
        except exception.CgsnapError as e:
            problems.append(f"disk {dev} still on its overlay ({e})")
    if not problems:
        try:
            diskuse.remove_tree(out_dir, hypervisor=hypervisor)
        except diskuse.InUse as e:
            problems.append(str(e))
        except OSError as e:
            problems.append(f"cannot remove {out_dir}: {e.strerror}")
    return problems


class SnapshotLocalDisks(CgsnapTask):
    """In the window: one atomic external disk-only snapshot of all local disks."""

    default_provides = "local_cut"

    def execute(self, instance, local_plan, memory_plan):
        self.fault_point()
        if not local_plan and not memory_plan:
            return {}
        self.drivers.hypervisor.snapshot_disks_external(
            instance["id"], {dev: p["overlay"] for dev, p in local_plan.items()},
            memory_file=memory_plan.get("path"))
        return {dev: "cut" for dev in local_plan}


class ExportLocalDisks(CgsnapTask):
    """After the thaw: copy each frozen original to a standalone qcow2, then
    commit the overlay back.  Safe to run twice."""

    default_provides = "local_copies"

    def execute(self, instance, local_plan, local_cut):
        self.fault_point()
        out = {}
        for dev, p in local_plan.items():
            hyp = self.drivers.hypervisor
            if hyp.disk_source(instance["id"], dev) == p["overlay"]:
                faults.point("local.copy")
                tmp = p["copy"] + ".part"
                proc = subprocess.run(["qemu-img", "convert", "-U", "-O", "qcow2", p["base"], tmp],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    raise exception.SnapshotFailed(
                        f"copy of {dev} failed: {proc.stderr.strip().splitlines()[-1:]}")
                state.secure_file(tmp)  # the guest's data: 0600 whatever the umask is
                os.replace(tmp, p["copy"])
                hyp.commit_active_layer(instance["id"], dev)
            try:
                diskuse.remove_file(p["overlay"], hypervisor=hyp)
            except diskuse.InUse as e:  # the copy is good; the set's delete retries this
                LOG.warning("kept the overlay of %s: %s", dev, e)
            # after the thaw: what `cgsnap verify` checks the copy against later
            out[dev] = {"path": p["copy"], "size_bytes": os.path.getsize(p["copy"]),
                        "sha256": manifest_mod.sha256_file(p["copy"])}
        return out


class RecordMemoryImage(CgsnapTask):
    """After the thaw: size and sha256 of the memory image (``--memory``)."""

    default_provides = "memory_image"

    def execute(self, memory_plan, freeze):
        self.fault_point()
        if not memory_plan:
            return None
        state.secure_file(memory_plan["path"])  # the guest's RAM: keys, passwords
        return dict(memory_plan, size_bytes=os.path.getsize(memory_plan["path"]),
                    sha256=manifest_mod.sha256_file(memory_plan["path"]),
                    captured_at=freeze["frozen_at"])


class DeleteLocalCopies(CgsnapTask):
    """Delete flow: remove this set's copies (only files in its own directory).
    A disk of the set's instance still on an overlay here (a failed set whose
    commit back failed) is committed back first; the directory is never
    removed while a guest still runs on a file in it (:mod:`cgsnap.diskuse`)."""

    def execute(self, set_id, manifest):
        self.fault_point()
        if not os.path.lexists(set_dir(set_id)):
            return
        devices = [m["device"] for m in overlay_members(manifest)]
        problems = put_disks_back(self.drivers.hypervisor, manifest["instance_id"], devices,
                                  set_id)
        if problems:
            diskuse.check_unused(set_dir(set_id), hypervisor=self.drivers.hypervisor)
            raise exception.CleanupIncomplete(f"set {set_id}: " + "; ".join(problems))
