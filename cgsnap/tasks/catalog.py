"""Tasks that touch cgsnap's own catalog of manifests."""

from oslo_log import log as logging

from cgsnap import catalog as catalog_mod
from cgsnap import exception, naming, plan, state
from cgsnap import manifest as manifest_mod
from cgsnap.tasks.base import CgsnapTask, failure_reason

LOG = logging.getLogger(__name__)


def _catalog():
    return catalog_mod.Catalog(state.catalog_url())


class RecordSet(CgsnapTask):
    """Write the manifest (status ``creating``) with every member's
    deterministic name, before any side effect on storage or the guest.

    Its revert marks the manifest ``failed`` with the reason, which is why
    it runs first: every later failure leaves a failed manifest behind.
    """

    default_provides = "manifest"

    def execute(self, set_id, instance, options):
        self.fault_point()
        cat = _catalog()
        _ = cat.catalog_id  # read (and cached) now: member metadata needs it in the window
        try:  # safe to run twice: an earlier attempt's record is reused
            return cat.get(set_id)
        except exception.SnapshotSetNotFound:
            pass
        members, skipped = plan.members(instance, set_id, options)
        doc = manifest_mod.new(
            set_id,
            options.get("name") or naming.default_set_name(instance["name"], manifest_mod.utcnow()),
            instance, members, options,
            root_excluded=bool(options.get("exclude_root")),
            excluded_volumes=options.get("exclude_volumes") or (),
            skipped_disks=skipped,
            hypervisor_uri=self.drivers.hypervisor.uri,
            idempotency_key=options.get("idempotency_key"),
            labels=options.get("labels"),
            machine=instance.get("machine"),
            parent=_parent(cat, instance["id"]))
        return cat.create(doc)

    def revert(self, set_id, result, flow_failures=None, **kwargs):
        reason = failure_reason(flow_failures)
        try:  # a manifest that does not verify gets its status column only
            _catalog().mark(set_id, manifest_mod.STATUS_FAILED, status_reason=reason[:1000],
                            consistency=None)
        except exception.SnapshotSetNotFound:
            pass  # never recorded (e.g. a duplicate idempotency key): nothing to mark
        except Exception as e:
            LOG.error("revert: could not mark set %s failed: %s", set_id, e)


def _parent(cat, instance_id):
    """The set a new one follows: the newest available set of the instance.
    (Once restore exists, the set the instance was last restored from.)"""
    newest = None
    for doc in cat.list(instance_id=instance_id, status=manifest_mod.STATUS_AVAILABLE):
        if newest is None or doc["created_at"] > newest["created_at"]:
            newest = doc
    return newest["id"] if newest else None


class FinalizeSet(CgsnapTask):
    """Mark the manifest ``available``: consistency, freeze window, members."""

    default_provides = "result"

    def execute(self, manifest, agent, freeze, thaw, volume_cut, volume_snapshots,
                local_copies, root_images, memory_image, shared_volumes=()):
        self.fault_point()
        doc = dict(manifest)
        by_name = {s["name"]: s for s in volume_snapshots}
        members = []
        for m in doc["members"]:
            m = dict(m)
            snap = by_name.get(m["name"])
            if snap:
                m.update(snapshot_id=snap["id"], status=snap["status"], size_gb=snap["size_gb"])
            copy = local_copies.get(m["device"]) if m["kind"] == "local-qcow2" else None
            img = root_images.get(m["device"]) if m["kind"] == "glance-image" else None
            if img:
                m.update(image_id=img["id"], status="available",
                         size_gb=max(1, -(-(img["size"] or 0) // (1 << 30))))
            if copy:
                m.update(path=copy["path"], status="available",
                         size_gb=max(1, -(-copy["size_bytes"] // (1 << 30))),
                         size_bytes=copy["size_bytes"], sha256=copy.get("sha256"))
            if m.get("volume_id") and m["volume_id"] in (shared_volumes or ()):
                # --allow-shared-volumes: another instance may write to it
                m["consistency"] = manifest_mod.CONSISTENCY_CRASH
            members.append(m)
        doc["members"] = members
        doc["status"] = manifest_mod.STATUS_AVAILABLE
        doc["consistency"], reason = _consistency(freeze, thaw)
        doc["freeze"] = {
            "started_at": freeze["started_at"], "frozen_at": freeze["frozen_at"],
            "thaw_started_at": thaw["started_at"],
            "ended_at": thaw["ended_at"],
            "window_s": thaw["window_s"], "filesystems_frozen": freeze["frozen"],
            "filesystems_thawed": thaw["thawed"], "guard": thaw.get("guard"),
            "agent": ("not-asked" if agent.get("skipped") else
                      "ok" if agent["reachable"] else "unreachable"),
        }
        doc["memory"] = memory_image
        if volume_cut["mode"] != "none":
            doc["backend_consistency"] = "group" if volume_cut["group_snapshot"] else "none"
        doc["group_snapshot"] = volume_cut["group_snapshot"]
        if not agent["reachable"] and not agent.get("skipped"):
            reason = agent["error"]
        if reason:
            doc["status_reason"] = f"crash-consistent: {reason}"
        elif shared_volumes:
            doc["status_reason"] = ("crash-consistent members (volumes shared with another "
                                    "instance): " + ", ".join(shared_volumes))
        # Compare-and-set: only a set still 'creating' (and made by this host)
        # becomes available; one that recover reverted meanwhile stays failed.
        return _catalog().save(doc, expect_status=manifest_mod.STATUS_CREATING)


def _consistency(freeze, thaw):
    """The set's consistency and, when it is less than the freeze promised,
    why.  A window that outlived its deadline (``freeze_timeout`` from the
    moment the freeze returned) is never filesystem-consistent."""
    mode = freeze["mode"]
    if freeze.get("reason"):
        return manifest_mod.CONSISTENCY_CRASH, freeze["reason"]
    if mode == manifest_mod.CONSISTENCY_FILESYSTEM:
        # The thaw may start in time and still end late (a slow agent, a
        # libvirtd that restarts under it): the window counts, not the start.
        missed = bool(thaw.get("deadline_missed"))
        if freeze.get("timeout_s") and thaw.get("window_s") is not None:
            missed = missed or thaw["window_s"] > freeze["timeout_s"]
        if missed:
            return manifest_mod.CONSISTENCY_CRASH, (
                f"the freeze window ({thaw['window_s']:.2f}s) outlived freeze_timeout "
                f"({freeze['timeout_s']:g}s)")
    return mode, None


class MarkSetDeleting(CgsnapTask):
    """First step of a delete: status ``deleting``; its revert records
    ``error_deleting`` with the reason so an operator sees what is stuck."""

    default_provides = "manifest"

    def execute(self, set_id):
        self.fault_point()
        return _catalog().update(set_id, status=manifest_mod.STATUS_DELETING, status_reason=None)

    def revert(self, set_id, result, flow_failures=None, **kwargs):
        try:
            _catalog().mark(set_id, manifest_mod.STATUS_ERROR_DELETING,
                            status_reason=failure_reason(flow_failures)[:1000])
        except Exception as e:
            LOG.error("revert: could not mark set %s error_deleting: %s", set_id, e)


class RemoveManifest(CgsnapTask):
    """Last step of a delete: the members are gone, drop the manifest."""

    def execute(self, set_id):
        self.fault_point()
        _catalog().delete(set_id)
