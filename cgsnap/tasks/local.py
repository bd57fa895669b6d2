"""Tasks for file-backed disks on the hypervisor host.

Used for local disks (``local_disks = qcow2``, plain libvirt/KVM hosts) and
for an image-backed root (then :mod:`.image` uploads the copy to Glance).
Inside the freeze
window one atomic disk-only external snapshot switches every local disk to a
new overlay, which freezes the original file in time.  After the thaw the
original is copied to a standalone qcow2 in ``local_dir/<set id>/`` and the
overlay is block-committed back, so the guest's disk chain ends as it began.
"""

import hashlib
import os
import shutil
import subprocess

from oslo_log import log as logging

from cgsnap import exception, faults, state
from cgsnap import manifest as manifest_mod
from cgsnap.conf import CONF
from cgsnap.tasks.base import CgsnapTask

LOG = logging.getLogger(__name__)


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
        out_dir = set_dir(set_id)
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as e:
            raise exception.Refused(f"cannot create {out_dir}: {e.strerror}") from None
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
    while any disk still uses a file in it.  Used by reverts and recovery."""
    out_dir = set_dir(set_id)
    problems = []
    for dev in devices:
        try:
            src = hypervisor.disk_source(instance_id, dev)
            if src and src.startswith(out_dir + os.sep):
                hypervisor.commit_active_layer(instance_id, dev)
        except exception.CgsnapError as e:
            problems.append(f"disk {dev} still on its overlay ({e})")
    if not problems:
        shutil.rmtree(out_dir, ignore_errors=True)
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
                os.replace(tmp, p["copy"])
                hyp.commit_active_layer(instance["id"], dev)
            try:
                os.remove(p["overlay"])
            except FileNotFoundError:
                pass
            out[dev] = {"path": p["copy"], "size_bytes": os.path.getsize(p["copy"])}
        return out


class RecordMemoryImage(CgsnapTask):
    """After the thaw: size and sha256 of the memory image (``--memory``)."""

    default_provides = "memory_image"

    def execute(self, memory_plan, freeze):
        self.fault_point()
        if not memory_plan:
            return None
        digest = hashlib.sha256()
        with open(memory_plan["path"], "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return dict(memory_plan, size_bytes=os.path.getsize(memory_plan["path"]),
                    sha256=digest.hexdigest(), captured_at=freeze["frozen_at"])


class DeleteLocalCopies(CgsnapTask):
    """Delete flow: remove this set's copies (only files in its own directory)."""

    def execute(self, set_id):
        self.fault_point()
        path = set_dir(set_id)
        if os.path.isdir(path):
            shutil.rmtree(path)
