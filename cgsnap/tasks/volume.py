"""Tasks that touch block storage (Cinder) through the volume driver."""

import concurrent.futures
import threading
import time

from oslo_log import log as logging

from cgsnap import catalog as catalog_mod
from cgsnap import (
    cleanup,
    concurrency,
    exception,
    faults,
    naming,
    plan,
    progress,
    quota,
    state,
    wait,
)
from cgsnap import drivers as drivers_mod
from cgsnap import manifest as manifest_mod
from cgsnap.conf import CONF
from cgsnap.tasks.base import CgsnapTask

LOG = logging.getLogger(__name__)

_pool = None
_pool_lock = threading.Lock()
# set id -> futures of creates that may still be running (see CleanupVolumeSnapshots)
_inflight = {}
delete_set_snapshots = cleanup.delete_set_snapshots  # for bench/ and older callers


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


def create_gate(vols):
    """The gate that bounds this run's creates: the endpoint's adaptive
    controller (``[snapshot] adaptive_creates``), or a fixed
    ``max_parallel_creates``."""
    conf = CONF.snapshot
    if not conf.adaptive_creates:
        ctl = concurrency.Controller(conf.max_parallel_creates,
                                     start=conf.max_parallel_creates, grow_below=0, grow_rise=0,
                                     shrink_above=float("inf"))
    else:
        key = getattr(vols, "endpoint_key", None)
        key = key() if callable(key) else type(vols).__name__
        ctl = concurrency.for_endpoint(key, conf.max_parallel_creates,
                                       start=conf.adaptive_creates_start)
    return concurrency.Gate(ctl)


def _log_concurrency(gate, n):
    limits = gate.limits()
    LOG.info("per-volume cut: %d creates, at most %d in flight; limit per create %s, "
             "now %d (%s)", n, gate.max_in_flight, limits, gate.controller.limit,
             "adaptive" if CONF.snapshot.adaptive_creates else "fixed")
    last_cut_concurrency.update(limits=limits, max_in_flight=gate.max_in_flight,
                                limit_after=gate.controller.limit)


# The last per-volume cut's concurrency in this process (bench/freeze_window.py shows it).
last_cut_concurrency = {}


def volume_members(manifest):
    return [m for m in manifest["members"] if m["kind"] == manifest_mod.KIND_CINDER_SNAPSHOT]


class CheckVolumes(CgsnapTask):
    """Every volume exists, is ``in-use`` and is attached to this instance.

    A (multiattach) volume also attached to another instance is refused
    unless ``--allow-shared-volumes``: the freeze does not quiesce the other
    instance's writes, so its snapshot is at best crash-consistent.  When
    allowed, its id is in ``shared_volumes`` and the manifest records that
    member as crash-consistent.

    Provides each volume's size (for the quota check), Cinder group (for
    :class:`ChooseVolumeCut`) and the shared volumes."""

    default_provides = ("volume_sizes", "volume_groups", "shared_volumes")

    def execute(self, instance, manifest, options):
        self.fault_point()
        attached = {d["serial"] for d in instance["disks"] if d["serial"]}
        for vid in manifest["excluded_volumes"]:
            if vid not in attached:
                raise exception.Refused(
                    f"--exclude-volume {vid}: no such volume is attached to instance "
                    f"{instance['name']}")
        sizes, groups, shared = {}, {}, []
        members = volume_members(manifest)
        if not members:  # a plain libvirt host may have no volume service at all
            return sizes, groups, shared
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
            if others and not options.get("allow_shared_volumes"):
                raise exception.Refused(
                    f"volume {vid} (disk {member['device']}) is also attached to instance "
                    f"{', '.join(others)}: freezing {instance['name']} does not stop writes "
                    "from there, so its snapshot would only be crash-consistent; use "
                    "--allow-shared-volumes to take it anyway (recorded as crash-consistent)")
            if others:
                shared.append(vid)
            sizes[vid] = vol["size_gb"]
            groups[vid] = vol.get("group_id")
        return sizes, groups, shared


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
        # Creates still in flight (a window timeout, SIGTERM) would make
        # snapshots after the delete: wait for them, then delete and watch
        # for late arrivals, as recover does.
        futures = _inflight.pop(set_id, ())
        if futures:
            _done, running = concurrent.futures.wait(futures, CONF.snapshot.cleanup_timeout)
            if running:
                LOG.error("revert: %d snapshot creates of set %s are still running",
                          len(running), set_id)
        try:
            left = cleanup.delete_volume_members(self.drivers.volumes, set_id,
                                                 CONF.snapshot.cleanup_timeout)
            LOG.info("revert: deleted %d snapshots of set %s", left, set_id)
        except Exception as e:  # log and swallow; the caller verifies nothing is left
            LOG.error("revert: could not delete every snapshot of set %s: %s", set_id, e)


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
        window = _Window(freeze, options)
        if window.frozen and not window.remaining():
            # Past the deadline the guard may have thawed already: a cut now
            # would not be consistent, so none is started.
            raise window.timeout(volume_members(manifest), "the deadline passed before the "
                                 "snapshots were started")
        if mode == CUT_GROUP:
            return self._group(set_id, manifest, volume_cut_plan, window)
        return self._per_volume(set_id, manifest, window)

    def _per_volume(self, set_id, manifest, window):
        members = volume_members(manifest)
        vols = self.drivers.volumes
        gate = create_gate(vols)
        futures = [executor().submit(gate.call, vols.create_snapshot, m["volume_id"], m["name"],
                                     member_metadata(set_id, manifest, m),
                                     deadline=window.deadline)
                   for m in members]
        _inflight[set_id] = futures
        done, running = concurrent.futures.wait(futures, window.remaining())
        _log_concurrency(gate, len(members))
        not_started = [f for f in done if isinstance(f.exception(), concurrency.NotStarted)]
        if running or not_started:
            late = [m for m, f in zip(members, futures) if f in running or f in not_started]
            raise window.timeout(late, "the create call did not return")
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        faults.point("task.SnapshotVolumes.created")
        total = len(members)
        last = {"snaps": []}

        def _progress(snaps):
            last["snaps"] = snaps
            ready = sum(1 for s in snaps if s["status"] != "creating")
            progress.report(f"waiting for snapshots: {ready}/{total} ready")

        try:
            snaps = window.poll(
                lambda: vols.list_snapshots(set_id),
                lambda ss: len(ss) >= total and all(s["status"] != "creating" for s in ss),
                what=f"{total} member snapshots", on_poll=_progress)
        except exception.WaitTimeout:
            ready = {s["name"] for s in last["snaps"] if s["status"] != "creating"}
            raise window.timeout([m for m in members if m["name"] not in ready],
                                 "still creating") from None
        bad = [s for s in snaps if s["status"] != "available"]
        if bad:
            raise exception.SnapshotFailed(
                f"snapshot {bad[0]['name']} of volume {bad[0]['volume_id']} went to "
                f"'{bad[0]['status']}'")
        _inflight.pop(set_id, None)
        return {"mode": CUT_PER_VOLUME, "group_snapshot": None,
                "snapshots": [_member_view(s) for s in snaps]}

    def _group(self, set_id, manifest, plan, window):
        vols = self.drivers.volumes
        fut = executor().submit(vols.create_group_snapshot, plan["group_id"], plan["name"],
                                plan["description"])
        _inflight[set_id] = [fut]
        try:
            gs = fut.result(window.remaining())
        except concurrent.futures.TimeoutError:
            raise window.timeout(volume_members(manifest), f"the group snapshot of group "
                                 f"{plan['group_id']} was not created") from None
        faults.point("task.SnapshotVolumes.created")
        progress.report("waiting for the group snapshot")
        try:
            gs = window.poll(lambda: vols.get_group_snapshot(gs["id"]),
                             lambda g: g["status"] != "creating",
                             what=f"group snapshot {gs['id']}")
        except exception.WaitTimeout:
            raise window.timeout(volume_members(manifest),
                                 f"group snapshot {gs['id']} still creating") from None
        if gs["status"] != "available":
            raise exception.SnapshotFailed(
                f"group snapshot {gs['id']} of group {plan['group_id']} went to "
                f"'{gs['status']}'")
        _inflight.pop(set_id, None)
        return {"mode": CUT_GROUP, "snapshots": [],
                "group_snapshot": {k: gs[k] for k in ("id", "name", "group_id")}}


class _Window:
    """The deadline every create and poll of the cut is bounded by: inside a
    freeze, the freeze's absolute deadline (``freeze_timeout`` from the moment
    the freeze call returned); otherwise ``wait_timeout`` from now."""

    def __init__(self, freeze, options):
        deadline = freeze.get("deadline_mono")
        if deadline is None and freeze.get("started_mono") is not None:  # an older logbook
            deadline = freeze["started_mono"] + options["freeze_timeout"]
        self.frozen = deadline is not None
        if self.frozen:
            self.limit_s = freeze.get("timeout_s") or options["freeze_timeout"]
            # Polls stay frequent: overshoot is added to the window.
            self.max_interval = CONF.snapshot.poll_max_interval_frozen
        else:
            self.limit_s = options["wait_timeout"]
            deadline = time.monotonic() + self.limit_s
            self.max_interval = CONF.snapshot.poll_max_interval
        self.deadline = deadline

    def remaining(self):
        return max(self.deadline - time.monotonic(), 0.0)

    def poll(self, fetch, done, what, on_poll=None):
        return wait.poll(fetch, done, self.remaining(),
                         initial=CONF.snapshot.poll_initial_interval,
                         maximum=self.max_interval, what=what, on_poll=on_poll)

    def timeout(self, late_members, why):
        names = ", ".join(f"{m['device']} (volume {m['volume_id']})" for m in late_members)
        where = (f"inside the freeze window (freeze_timeout {self.limit_s:g}s)" if self.frozen
                 else f"within wait_timeout ({self.limit_s:g}s)")
        subject = f"member snapshot(s) {names}" if names else "the volume cut"
        return exception.WindowTimeout(f"{subject} did not finish {where}: {why}",
                                       in_window=self.frozen,
                                       members=[m["name"] for m in late_members])


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
    """A member's metadata, with the id of the catalog that owns it."""
    return naming.member_metadata(set_id, manifest["instance_id"], member["role"],
                                  member["device"], manifest_mod.SCHEMA_VERSION,
                                  manifest["name"],
                                  catalog_id=catalog_mod.Catalog(state.catalog_url()).catalog_id,
                                  labels=manifest.get("labels"))


def _member_view(snap):
    return {k: snap[k] for k in ("id", "name", "status", "volume_id", "size_gb")}


class DeleteVolumeSnapshots(CgsnapTask):
    """Delete every Cinder snapshot of the set (found by metadata) and wait
    until they are gone."""

    default_provides = "deleted_snapshots"

    def execute(self, set_id, manifest):
        self.fault_point()
        members = volume_members(manifest)
        if not members:
            return 0
        why = drivers_mod.unavailable("volumes", self.drivers)
        if why and plan.never_created_in(manifest, members):
            LOG.info("set %s: Cinder not asked (%s); the set never created a snapshot",
                     set_id, why)
            return 0
        return delete_set_snapshots(self.drivers.volumes, set_id, CONF.snapshot.cleanup_timeout)
