"""Tasks that touch block storage (Cinder) through the volume driver."""

import concurrent.futures
import threading
import time

from oslo_log import log as logging

from cgsnap import exception, faults, naming, progress, wait
from cgsnap import manifest as manifest_mod
from cgsnap.conf import CONF
from cgsnap.tasks.base import CgsnapTask

LOG = logging.getLogger(__name__)

_pool = None
_pool_lock = threading.Lock()


def executor():
    """One long-lived pool per process for the snapshot fan-out (creating a
    pool per run would cost thread start-up inside the freeze window)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=CONF.snapshot.max_parallel_creates,
                thread_name_prefix="cgsnap-fanout")
        return _pool


def volume_members(manifest):
    return [m for m in manifest["members"] if m["kind"] == manifest_mod.KIND_CINDER_SNAPSHOT]


class CheckVolumes(CgsnapTask):
    """Every volume exists, is ``in-use`` and is attached to this instance."""

    default_provides = "volume_sizes"

    def execute(self, instance, manifest):
        self.fault_point()
        attached = {d["serial"] for d in instance["disks"] if d["serial"]}
        for vid in manifest["excluded_volumes"]:
            if vid not in attached:
                raise exception.Refused(
                    f"--exclude-volume {vid}: no such volume is attached to instance "
                    f"{instance['name']}")
        sizes = {}
        for member in volume_members(manifest):
            vid = member["volume_id"]
            try:
                vol = self.drivers.volumes.get_volume(vid)
            except exception.NotFound:
                raise exception.Refused(
                    f"volume {vid} (disk {member['device']}) does not exist in Cinder") from None
            if vol["status"] != "in-use":
                raise exception.Refused(
                    f"volume {vid} (disk {member['device']}) is '{vol['status']}', not 'in-use'")
            others = [s for s in vol["attached_to"] if s and s != instance["id"]]
            if instance["id"] not in vol["attached_to"]:
                owner = f"instance {others[0]}" if others else "no instance"
                raise exception.Refused(
                    f"volume {vid} (disk {member['device']}) is attached to {owner} in Cinder, "
                    f"not to {instance['id']}")
            sizes[vid] = vol["size_gb"]
        return sizes


class CheckQuota(CgsnapTask):
    """Enough snapshot and gigabyte quota for every member, checked up front."""

    def execute(self, manifest, volume_sizes):
        self.fault_point()
        count = len(volume_members(manifest))
        if not count:
            return
        limits = self.drivers.volumes.get_limits()
        need_gb = sum(volume_sizes.values())
        for kind, need in (("snapshots", count), ("gigabytes", need_gb)):
            cap, used = limits[f"{kind}_max"], limits[f"{kind}_used"]
            if cap is not None and cap >= 0 and used + need > cap:
                raise exception.Refused(
                    f"Cinder {kind} quota too low: this set needs {need}, "
                    f"{max(cap - used, 0)} of {cap} left")


class CleanupVolumeSnapshots(CgsnapTask):
    """Revert-only: delete every snapshot tagged with this set's id.

    It sits before the freeze so that, on any later failure, it runs after the
    guest is thawed.  It finds members by metadata (not by remembered ids), so
    it also catches creates whose response was lost.
    """

    def execute(self, set_id, manifest):
        self.fault_point()

    def revert(self, set_id, manifest, **kwargs):
        if not volume_members(manifest):
            return
        try:
            left = delete_set_snapshots(self.drivers.volumes, set_id,
                                        CONF.snapshot.cleanup_timeout)
            LOG.info("revert: deleted %d snapshots of set %s", left, set_id)
        except Exception as e:  # log and swallow; the caller verifies nothing is left
            LOG.error("revert: could not delete every snapshot of set %s: %s", set_id, e)


def delete_set_snapshots(volumes, set_id, deadline_s):
    """Delete all snapshots of a set and wait until they are gone.

    Snapshots still ``creating`` cannot be deleted in Cinder, so wait for them
    to settle first.  Returns how many snapshots were deleted.
    """
    deadline = time.monotonic() + deadline_s
    remaining = lambda: max(deadline - time.monotonic(), 0.0)  # noqa: E731
    snaps = wait.poll(lambda: volumes.list_snapshots(set_id),
                      lambda ss: not any(s["status"] == "creating" for s in ss),
                      remaining(), what=f"snapshots of set {set_id} to settle")
    for snap in snaps:
        if snap["status"] not in ("deleting", "deleted"):
            volumes.delete_snapshot(snap["id"])
    wait.poll(lambda: volumes.list_snapshots(set_id),
              lambda ss: not [s for s in ss if s["status"] != "error_deleting"],
              remaining(), initial=0.1, what=f"deletion of set {set_id}")
    stuck = [s["id"] for s in volumes.list_snapshots(set_id)]
    if stuck:
        raise exception.CleanupIncomplete(
            f"snapshots of set {set_id} stuck in error_deleting: {', '.join(stuck)}")
    return len(snaps)


class SnapshotVolumes(CgsnapTask):
    """The in-window fan-out: create every volume snapshot concurrently, then
    wait (one list call per poll) until all have left ``creating``.

    One atom for the whole fan-out keeps the persisted state changes inside
    the freeze window few and independent of the number of members.
    Its revert is :class:`CleanupVolumeSnapshots` (which runs after the thaw).
    """

    default_provides = "volume_snapshots"

    def execute(self, set_id, manifest, freeze, options):
        self.fault_point()
        members = volume_members(manifest)
        if not members:
            return []
        vols = self.drivers.volumes
        if freeze.get("started_mono") is not None:
            # The wait must end before the freeze deadline, so the guest is thawed in
            # time, and its polls stay frequent: overshoot is added to the window.
            deadline = options["freeze_timeout"] - (time.monotonic() - freeze["started_mono"])
            max_interval = CONF.snapshot.poll_max_interval_frozen
        else:
            deadline = options["wait_timeout"]
            max_interval = CONF.snapshot.poll_max_interval
        meta = lambda m: naming.member_metadata(  # noqa: E731
            set_id, manifest["instance_id"], m["role"], m["device"],
            manifest_mod.SCHEMA_VERSION, manifest["name"])
        futures = [executor().submit(vols.create_snapshot, m["volume_id"], m["name"], meta(m))
                   for m in members]
        errors = []
        for fut in futures:
            try:
                fut.result()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]
        faults.point("task.SnapshotVolumes.created")
        total = len(members)

        def _progress(snaps):
            ready = sum(1 for s in snaps if s["status"] != "creating")
            progress.report(f"waiting for snapshots: {ready}/{total} ready")

        snaps = wait.poll(
            lambda: vols.list_snapshots(set_id),
            lambda ss: len(ss) >= total and all(s["status"] != "creating" for s in ss),
            deadline, CONF.snapshot.poll_initial_interval, max_interval,
            what=f"{total} member snapshots", on_poll=_progress)
        bad = [s for s in snaps if s["status"] != "available"]
        if bad:
            raise exception.SnapshotFailed(
                f"snapshot {bad[0]['name']} of volume {bad[0]['volume_id']} went to "
                f"'{bad[0]['status']}'")
        return [{k: s[k] for k in ("id", "name", "status", "volume_id", "size_gb")}
                for s in snaps]


class DeleteVolumeSnapshots(CgsnapTask):
    """Delete every Cinder snapshot of the set (found by metadata) and wait
    until they are gone."""

    default_provides = "deleted_snapshots"

    def execute(self, set_id, manifest):
        self.fault_point()
        if not volume_members(manifest):
            return 0
        return delete_set_snapshots(self.drivers.volumes, set_id, CONF.snapshot.cleanup_timeout)
