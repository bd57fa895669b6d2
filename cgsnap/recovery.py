"""``cgsnap recover``: finish off operations that a crash interrupted.

A create that died (power loss, kill -9, OOM) leaves its manifest in
``creating`` and holds no lock any more (flock dies with its process).  Its
TaskFlow logbook says how far it got, but its reverts never ran; recovery runs
their equivalent from the manifest, which names every member in advance:

1. thaw the guest (harmless if it is not frozen; the thaw guard normally
   did it already) and resume it if it was paused for ``--memory``;
2. put every local disk back on its original file (commit an overlay the
   crash left active) and remove the set's files;
3. delete the set's Cinder snapshots and Glance images, found by metadata;
4. mark the manifest ``failed`` with the reason.

Only this host's sets (``[DEFAULT] host``) are touched: with a catalog
shared by several hosts, another host's ``creating`` set is in flight there,
and its lock is that host's.  Sets made before sets recorded their host
(catalog revision 0002) have no host and are recovered as before.  A set
whose manifest does not verify is reported and left alone.

Sets interrupted while deleting are deleted again, and failed sets whose
revert could not remove everything (``cleanup_pending``, e.g. the storage API
was down) are cleaned up again.

An interrupted create is *completed* (its TaskFlow logbook is resumed) only
when it got past a successful thaw with the guard disarmed: every member was
then taken inside a freeze that held.  Anything earlier is reverted: a set
whose point in time cannot be proven must not be offered as consistent.
"""

import os

from oslo_log import log as logging

from cgsnap import catalog as catalog_mod
from cgsnap import drivers as drivers_mod
from cgsnap import exception, lock, manifest, runner, state
from cgsnap.catalog import Catalog
from cgsnap.cleanup import admin_reset_command, stuck_advice  # noqa: F401 (re-exported)
from cgsnap.cleanup import delete_volume_members as _delete_volume_members

LOG = logging.getLogger(__name__)


def recover(instance_id=None):
    """Recover every interrupted set (of one instance, or all); return a list of
    ``{"id", "instance_id", "was", "action", "result"}``."""
    cat = Catalog(state.catalog_url())
    out = []
    for status in (manifest.STATUS_CREATING, manifest.STATUS_DELETING, manifest.STATUS_FAILED):
        for row in cat.rows(instance_id=instance_id, status=status):
            if any(r["id"] == row.id for r in out):
                continue  # once per run: a revert that left something is now 'failed'
            doc = row.doc
            if status == manifest.STATUS_FAILED and not (doc or {}).get("cleanup_pending"):
                continue
            skipped = {"id": row.id, "instance_id": row.instance_id, "was": status,
                       "action": "skipped"}
            if not owned_here(row):
                out.append(dict(skipped, result=f"owned by host {row.host}, not this host "
                                                f"({catalog_mod.this_host()})"))
                continue
            if doc is None:
                out.append(dict(skipped, result=f"corrupt manifest, left alone: {row.error}"))
                continue
            try:
                with lock.instance_lock(doc["instance_id"], "recover"):
                    out.append(recover_locked(cat, doc["id"]))
            except exception.Locked:
                out.append(dict(skipped, result="in progress in another process"))
            except exception.IntegrityError as e:
                out.append(dict(skipped, result=f"corrupt manifest, left alone: {e}"))
    return out


def owned_here(row):
    """Whether this host may recover the set of catalog row ``row``."""
    return row.host is None or row.host == catalog_mod.this_host()


def recover_locked(cat, set_id):
    """Recover one set; the caller holds the instance lock.  Raises
    IntegrityError, and changes nothing, if its manifest does not verify."""
    doc = cat.get(set_id)
    was = doc["status"]
    if was == manifest.STATUS_DELETING:
        runner.run_delete_flow(set_id)
        return {"id": set_id, "instance_id": doc["instance_id"], "was": was,
                "action": "deleted", "result": "ok"}
    if was == manifest.STATUS_FAILED:  # a revert that could not finish: retry it
        problems = revert_members(doc)
        doc["cleanup_pending"] = bool(problems)
        if problems:
            doc["status_reason"] = ("cleanup incomplete; left behind: "
                                    + "; ".join(problems))[:1000]
        cat.save(doc)
        return {"id": set_id, "instance_id": doc["instance_id"], "was": was,
                "action": "cleaned", "result": "ok" if not problems else "incomplete",
                "detail": "; ".join(problems)}
    detail = runner.completable(set_id)
    if detail is not None:
        try:
            runner.resume_create(detail, set_id)
            return {"id": set_id, "instance_id": doc["instance_id"], "was": was,
                    "action": "completed", "result": "ok"}
        except exception.CgsnapError as e:
            LOG.warning("recover: completing set %s failed (%s); it was reverted", set_id, e)
            return {"id": set_id, "instance_id": doc["instance_id"], "was": was,
                    "action": "reverted", "result": "ok"}
    problems = revert_members(doc)
    guard_record = os.path.join(state.state_dir(), "guards", f"{set_id}.json")
    reason = "interrupted before it completed (the cgsnap process died); reverted by recover"
    if os.path.exists(guard_record):
        reason += "; the thaw guard had thawed the guest"
    if problems:
        reason += "; left behind: " + "; ".join(problems)
    doc.update(status=manifest.STATUS_FAILED, status_reason=reason[:1000], consistency=None,
               cleanup_pending=bool(problems))
    cat.save(doc)
    return {"id": set_id, "instance_id": doc["instance_id"], "was": was,
            "action": "reverted", "result": "ok" if not problems else "incomplete",
            "detail": "; ".join(problems)}


def revert_members(doc):
    """Undo everything a create may have done; return what could not be undone."""
    drv = drivers_mod.get()
    problems = []
    kinds = {m["kind"] for m in doc["members"]}
    hyp = drv.hypervisor
    try:
        hyp.thaw(doc["instance_id"])
    except exception.CgsnapError as e:
        LOG.info("recover: thaw of %s: %s", doc["instance_id"], e)
    try:
        hyp.resume(doc["instance_id"])
    except (exception.CgsnapError, AttributeError) as e:
        LOG.info("recover: resume of %s: %s", doc["instance_id"], e)
    from cgsnap.tasks import image, local
    if kinds & set(local.OVERLAY_KINDS) or os.path.isdir(local.set_dir(doc["id"])):
        devices = [m["device"] for m in doc["members"] if m["kind"] in local.OVERLAY_KINDS]
        problems += local.put_disks_back(hyp, doc["instance_id"], devices, doc["id"])
    if manifest.KIND_GLANCE_IMAGE in kinds:
        try:
            image.delete_set_images(drv.images, doc["id"])
        except exception.CgsnapError as e:
            problems.append(f"Glance images ({e})")
    if manifest.KIND_CINDER_SNAPSHOT in kinds:
        try:
            _delete_volume_members(drv.volumes, doc["id"])
        except exception.CgsnapError as e:
            problems.append(f"Cinder snapshots ({e})")
    return problems

