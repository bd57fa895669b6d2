"""Tasks that touch block storage (Cinder) through the volume driver."""

import concurrent.futures
import functools
import threading
import time

from oslo_log import log as logging

from cgsnap import exception, faults, naming, progress, quota, wait
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
    """Every volume exists, is ``in-use`` and is attached to this instance.

    Provides each volume's size (for the quota check) and Cinder group (for
    :class:`ChooseVolumeCut`)."""

    default_provides = ("volume_sizes", "volume_groups")

    def execute(self, instance, manifest):
        self.fault_point()
        attached = {d["serial"] for d in instance["disks"] if d["serial"]}
        for vid in manifest["excluded_volumes"]:
            if vid not in attached:
                raise exception.Refused(
                    f"--exclude-volume {vid}: no such volume is attached to instance "
                    f"{instance['name']}")
        sizes, groups = {}, {}
        members = volume_members(manifest)
        if not members:  # a plain libvirt host may have no volume service at all
            return sizes, groups
        found = self.drivers.volumes.get_volumes([m["volume_id"] for m in members])
        for member in members:
            vid = member["volume_id"]
            vol = found.get(vid)
            if vol is None:
                raise exception.Refused(
                    f"volume {vid} (disk {member['device']}) does not exist in Cinder")
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
            groups[vid] = vol.get("group_id")
        return sizes, groups


CUT_GROUP = "group"          # one Cinder group snapshot cuts every volume member
CUT_PER_VOLUME = "per-volume"  # one snapshot per volume, created in parallel
CUT_NONE = "none"            # no volume members


class ChooseVolumeCut(CgsnapTask):
    """Decide, before the freeze, how the volume members are cut.

    A group snapshot is used when ``[snapshot] group_snapshots = auto`` and
    every volume member is in the same Cinder group, that group holds no
    other volume (a group snapshot would cut it too), the group is
    ``available``, and its group type is consistent: the
    ``consistent_group_snapshot_enabled`` spec is ``<is> True``, or, where
    the specs are hidden from this user, the type is listed in
    ``[snapshot] consistent_group_types``.  Otherwise volumes are cut one by
    one; the reason is recorded either way.
    """

    default_provides = "volume_cut_plan"

    def execute(self, set_id, manifest, volume_groups):
        self.fault_point()
        plan = self._choose(manifest, volume_groups)
        LOG.info("set %s: volume cut %s (%s)", set_id, plan["mode"], plan["reason"])
        if plan["mode"] == CUT_GROUP:
            plan.update(name=naming.group_snapshot_name(manifest["instance_id"], set_id),
                        description=naming.group_snapshot_description(
                            set_id, manifest["instance_id"]))
        return plan

    def _choose(self, manifest, volume_groups):
        members = {m["volume_id"] for m in volume_members(manifest)}
        if not members:
            return {"mode": CUT_NONE, "reason": "no volume members"}
        per_volume = lambda why: {"mode": CUT_PER_VOLUME, "reason": why}  # noqa: E731
        if CONF.snapshot.group_snapshots != "auto":
            return per_volume("[snapshot] group_snapshots = never")
        vols = self.drivers.volumes
        if not vols.supports_groups():
            return per_volume("the volume backend has no group snapshots")
        group_ids = {volume_groups.get(v) for v in members}
        if len(group_ids) != 1 or None in group_ids:
            return per_volume("the volumes are not all in one Cinder group")
        group = vols.get_group(group_ids.pop())
        if set(group["volume_ids"]) != members:
            return per_volume(f"group {group['id']} also holds volumes that are not members")
        if group["status"] != "available":
            return per_volume(f"group {group['id']} is '{group['status']}'")
        listed = set(CONF.snapshot.consistent_group_types)
        consistent = (group["consistent"] or group["group_type_name"] in listed
                      or group["group_type_id"] in listed)
        if not consistent:
            why = ("its specs are hidden from this user and it is not in "
                   "[snapshot] consistent_group_types" if group["consistent"] is None
                   else "consistent_group_snapshot_enabled is not '<is> True'")
            return per_volume(f"group type {group['group_type_name']}: {why}")
        return {"mode": CUT_GROUP, "group_id": group["id"],
                "group_type": group["group_type_name"],
                "reason": f"all {len(members)} volumes form group {group['id']} of "
                          f"consistent type {group['group_type_name']}"}


class CheckQuota(CgsnapTask):
    """Enough snapshot and gigabyte quota for every member, project-wide and
    per volume type, checked up front (see :mod:`cgsnap.quota`: advisory, and
    a cached answer may only accept)."""

    def execute(self, manifest, volume_sizes):
        self.fault_point()
        count = len(volume_members(manifest))
        if not count:
            return
        gigabytes = sum(volume_sizes.values())
        vols = self.drivers.volumes

        def by_type():  # asked only where a per-type limit is in force
            need = {}
            for vid, vtype in vols.volume_types(list(volume_sizes)).items():
                if vtype is not None:
                    n = need.setdefault(vtype, {"snapshots": 0, "gigabytes": 0})
                    n["snapshots"] += 1
                    n["gigabytes"] += volume_sizes[vid]
            return need

        answer = quota.check(vols, count, gigabytes, CONF.snapshot.quota_cache_seconds,
                             by_type=by_type)
        LOG.debug("quota: %d snapshots, %d GB fit (%s answer)", count, gigabytes, answer)


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

    A group snapshot of the set (found by its description) goes first: its
    members cannot be deleted one by one.  Snapshots still ``creating``
    cannot be deleted in Cinder, so wait for them to settle first.  Returns
    how many snapshots were deleted (a group snapshot counts once).
    """
    deadline = time.monotonic() + deadline_s
    remaining = lambda: max(deadline - time.monotonic(), 0.0)  # noqa: E731
    groups = 0
    if volumes.supports_groups():
        groups = _delete_and_wait(lambda: volumes.list_group_snapshots(set_id),
                                  volumes.delete_group_snapshot, remaining,
                                  f"the group snapshot of set {set_id}")
    return groups + _delete_and_wait(lambda: volumes.list_snapshots(set_id),
                                     volumes.delete_snapshot, remaining,
                                     f"snapshots of set {set_id}")


def _delete_and_wait(list_fn, delete_fn, remaining, what):
    """Let everything ``list_fn`` returns settle, delete it, wait until it is
    gone; raise CleanupIncomplete for what is stuck in ``error_deleting``."""
    found = wait.poll(list_fn, lambda xs: not any(x["status"] == "creating" for x in xs),
                      remaining(), what=f"{what} to settle")
    for item in found:
        if item["status"] not in ("deleting", "deleted"):
            delete_fn(item["id"])
    if found:
        wait.poll(list_fn, lambda xs: not [x for x in xs if x["status"] != "error_deleting"],
                  remaining(), initial=0.1, what=f"deletion of {what}")
        stuck = [x["id"] for x in list_fn()]
        if stuck:
            raise exception.CleanupIncomplete(
                f"{what} stuck in error_deleting: {', '.join(stuck)}")
    return len(found)


class SnapshotVolumes(CgsnapTask):
    """The in-window cut of every volume member, as one atom.

    * per-volume: create every snapshot concurrently, then wait (one list
      call per poll) until all have left ``creating``;
    * group: one group snapshot call, then wait (one GET per poll).

    One atom for the whole cut keeps the persisted state changes inside the
    freeze window few and independent of the number of members.  Its revert
    is :class:`CleanupVolumeSnapshots` (which runs after the thaw).
    Provides ``volume_cut``: ``{"mode", "snapshots", "group_snapshot"}``.
    """

    default_provides = "volume_cut"

    def execute(self, set_id, manifest, freeze, options, volume_cut_plan):
        self.fault_point()
        mode = volume_cut_plan["mode"]
        if mode == CUT_NONE:
            return {"mode": mode, "snapshots": [], "group_snapshot": None}
        if freeze.get("started_mono") is not None:
            # The wait must end before the freeze deadline, so the guest is thawed in
            # time, and its polls stay frequent: overshoot is added to the window.
            deadline = options["freeze_timeout"] - (time.monotonic() - freeze["started_mono"])
            max_interval = CONF.snapshot.poll_max_interval_frozen
        else:
            deadline = options["wait_timeout"]
            max_interval = CONF.snapshot.poll_max_interval
        poll = functools.partial(wait.poll, deadline_s=deadline,
                                 initial=CONF.snapshot.poll_initial_interval,
                                 maximum=max_interval)
        if mode == CUT_GROUP:
            return self._group(volume_cut_plan, poll)
        return self._per_volume(set_id, manifest, poll)

    def _per_volume(self, set_id, manifest, poll):
        members = volume_members(manifest)
        vols = self.drivers.volumes
        futures = [executor().submit(vols.create_snapshot, m["volume_id"], m["name"],
                                     member_metadata(set_id, manifest, m))
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

        snaps = poll(lambda: vols.list_snapshots(set_id),
                     lambda ss: len(ss) >= total and all(s["status"] != "creating" for s in ss),
                     what=f"{total} member snapshots", on_poll=_progress)
        bad = [s for s in snaps if s["status"] != "available"]
        if bad:
            raise exception.SnapshotFailed(
                f"snapshot {bad[0]['name']} of volume {bad[0]['volume_id']} went to "
                f"'{bad[0]['status']}'")
        return {"mode": CUT_PER_VOLUME, "group_snapshot": None,
                "snapshots": [_member_view(s) for s in snaps]}

    def _group(self, plan, poll):
        vols = self.drivers.volumes
        gs = vols.create_group_snapshot(plan["group_id"], plan["name"], plan["description"])
        faults.point("task.SnapshotVolumes.created")
        progress.report("waiting for the group snapshot")
        gs = poll(lambda: vols.get_group_snapshot(gs["id"]),
                  lambda g: g["status"] != "creating", what=f"group snapshot {gs['id']}")
        if gs["status"] != "available":
            raise exception.SnapshotFailed(
                f"group snapshot {gs['id']} of group {plan['group_id']} went to "
                f"'{gs['status']}'")
        return {"mode": CUT_GROUP, "snapshots": [],
                "group_snapshot": {k: gs[k] for k in ("id", "name", "group_id")}}


class TagGroupSnapshotMembers(CgsnapTask):
    """After the thaw: give each member of a group snapshot its deterministic
    member name and the set's metadata, as per-volume members have from birth.

    Provides ``volume_snapshots`` (the member snapshots) in both modes.
    Idempotent; its revert is :class:`CleanupVolumeSnapshots`, which deletes
    the group snapshot whether or not its members were tagged.
    """

    default_provides = "volume_snapshots"

    def execute(self, set_id, manifest, volume_cut):
        self.fault_point()
        gs = volume_cut["group_snapshot"]
        if not gs:
            return volume_cut["snapshots"]
        vols = self.drivers.volumes
        by_volume = {m["volume_id"]: m for m in volume_members(manifest)}
        snaps = vols.list_group_snapshot_members(gs, set_id)
        if sorted(s["volume_id"] for s in snaps) != sorted(by_volume):
            raise exception.SnapshotFailed(
                f"group snapshot {gs['id']} has {len(snaps)} member snapshots, "
                f"expected one for each of the {len(by_volume)} volumes")
        # A resumed run finds some members tagged already: tag only the rest.
        untagged = [(s["id"], by_volume[s["volume_id"]]) for s in snaps
                    if s["name"] != by_volume[s["volume_id"]]["name"]
                    or s["metadata"].get(naming.META_SET_ID) != set_id]
        # Concurrently: the guest is thawed, but the set is not done yet.
        list(executor().map(lambda sm: vols.tag_snapshot(
            sm[0], sm[1]["name"], member_metadata(set_id, manifest, sm[1])), untagged))
        return [dict(_member_view(s), name=by_volume[s["volume_id"]]["name"]) for s in snaps]


def member_metadata(set_id, manifest, member):
    return naming.member_metadata(set_id, manifest["instance_id"], member["role"],
                                  member["device"], manifest_mod.SCHEMA_VERSION,
                                  manifest["name"])


def _member_view(snap):
    return {k: snap[k] for k in ("id", "name", "status", "volume_id", "size_gb")}


class DeleteVolumeSnapshots(CgsnapTask):
    """Delete every Cinder snapshot of the set (found by metadata) and wait
    until they are gone."""

    default_provides = "deleted_snapshots"

    def execute(self, set_id, manifest):
        self.fault_point()
        if not volume_members(manifest):
            return 0
        return delete_set_snapshots(self.drivers.volumes, set_id, CONF.snapshot.cleanup_timeout)
